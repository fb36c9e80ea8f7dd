# vllm-session-router: the router alone (no bench, no tests), run as a non-root user.
#   docker build -t vllm-session-router:0.1.0 .
#   docker run --rm -p 8000:8000 vllm-session-router:0.1.0 --replica http://vllm-0:8000
ARG PYTHON_VERSION=3.12

# Build stage: install the package and its dependencies (uvloop included) into a virtualenv.
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -c "import uvloop, router.cli"

# Runtime stage: the same base image, the virtualenv, nothing else.
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --no-create-home --shell /usr/sbin/nologin router
COPY --from=build /opt/venv /opt/venv
# No .pyc writes: the chart runs the container with a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["vllm-session-router"]
