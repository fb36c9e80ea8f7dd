#!/usr/bin/env bash
# Build the offline vLLM + locust bundle for a GPU host that has Python 3.12 and
# torch 2.11.0+cu130 preinstalled but no package registry (docs/gpu.md).
#
# Runs on a machine that reaches PyPI. Writes .gpu-bundle/ (git-ignored):
#   wheels/            the downloaded wheels (cache; re-runs reuse them)
#   site/              all wheels unpacked into one folder, pruned
#   site.tar.xz.part-* the site folder, xz -9, split into equal parts of at most PART_MIB
#                      (default 56: one part per device-tool call, which carries 64 MiB at most)
#   site.tar.xz.sha256 checksum of the parts joined, checked on the host
#   manifest.txt       wheel list and sizes
#
# Usage: bench/real/gpu/build_bundle.sh [--no-locust] [--keep-site]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
OUT="$ROOT/.gpu-bundle"
WHEELS="$OUT/wheels"
SITE="$OUT/site"
PY_VERSION=3.12
PART_MIB="${PART_MIB:-56}"
WITH_LOCUST=1
KEEP_SITE=0
for arg in "$@"; do
  case "$arg" in
    --no-locust) WITH_LOCUST=0 ;;
    --keep-site) KEEP_SITE=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

# vLLM with --no-deps, plus the lean set of its dependencies that a small dense model needs.
# Left out on purpose: torch/triton/transformers/tokenizers/numpy/aiohttp/... (on the host),
# numba (n-gram speculative decoding only), flashinfer (VLLM_USE_FLASHINFER_SAMPLER=0),
# opencv / mistral vision extras.
VLLM_PACKAGES=(
  vllm==0.26.0
  annotated-types anthropic astor blake3 cachetools cbor2 compressed-tensors==0.17.0
  depyf==0.20.0 dill dnspython docstring-parser email-validator fastapi==0.136.3
  googleapis-common-protos httpcore2 httptools httpx2 ijson interegular jiter jmespath
  jsonschema jsonschema-specifications lark==1.2.2 'llguidance>=1.7,<1.8' lm-format-enforcer==0.11.3
  loguru mistral-common msgspec nvtx==0.2.15 openai openai-harmony
  opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-exporter-otlp
  opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-grpc
  opentelemetry-exporter-otlp-proto-http opentelemetry-semantic-conventions
  opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-http-transport==0.66b2
  opentelemetry-semantic-conventions-ai
  outlines-core==0.2.14 partial-json-parser prometheus-fastapi-instrumentator pybase64 pycountry
  pydantic==2.14.3 pydantic-core==2.50.4 pydantic-extra-types pydantic-settings python-dotenv
  python-json-logger python-multipart pyzmq rpds-py referencing setproctitle sniffio
  starlette==1.10.0 truststore typing-inspection uvicorn watchfiles websockets xgrammar==0.2.7
  # Imported at module level by vllm/entrypoints/openai/api_server.py (sagemaker router).
  'model-hosting-container-standards>=0.1.14,<1'
  # xgrammar imports it at module level (vllm/v1/structured_output -> xgrammar -> tvm_ffi).
  apache-tvm-ffi==0.1.10
)
# The load generator (SPEC section 8) and what it pulls beyond the host's usual packages.
LOCUST_PACKAGES=(
  locust gevent greenlet zope.event zope.interface flask flask-cors flask-login werkzeug blinker
  itsdangerous configargparse geventhttpclient brotli python-engineio python-socketio bidict
  simple-websocket wsproto
)

# Files loaded only inside try/except that a dense model on Hopper never needs (notes).
PRUNE=(
  "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"
  "vllm/third_party/deep_gemm/_C.cpython-310*.so"
  "vllm/third_party/deep_gemm/_C.cpython-311*.so"
  "vllm/third_party/deep_gemm/_C.cpython-313*.so"
  "vllm/third_party/deep_gemm/_C.cpython-314*.so"
  "vllm/_moe_C_stable_libtorch.abi3.so"
)

PLATFORMS=(manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64
           manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)

start=$(date +%s)
mkdir -p "$WHEELS"
packages=("${VLLM_PACKAGES[@]}")
[[ $WITH_LOCUST == 1 ]] && packages+=("${LOCUST_PACKAGES[@]}")

platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
download() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --abi cp312 --abi abi3 --abi none \
    "${platform_args[@]}" -d "$WHEELS" "$@"
}
echo "== downloading ${#packages[@]} packages into $WHEELS"
if ! download "${packages[@]}"; then
  # One bad name fails the whole batch: retry one by one to say which.
  failed=()
  for pkg in "${packages[@]}"; do download "$pkg" || failed+=("$pkg"); done
  if ((${#failed[@]})); then echo "FAILED to download: ${failed[*]}" >&2; exit 1; fi
fi
t_download=$(date +%s)

echo "== unpacking into $SITE"
rm -rf "$SITE"
mkdir -p "$SITE"
for whl in "$WHEELS"/*.whl; do
  python3 -m zipfile -e "$whl" "$SITE"
done
# Wheels may put importable code under NAME.data/purelib or platlib: move it up.
for data in "$SITE"/*.data; do
  [[ -d $data ]] || continue
  for sub in purelib platlib; do
    if [[ -d $data/$sub ]]; then cp -a "$data/$sub/." "$SITE/"; fi
  done
  rm -rf "$data"
done
# Console scripts are not installed this way; the host uses `python -m`.
for pattern in "${PRUNE[@]}"; do
  # shellcheck disable=SC2086  # the pattern is meant to glob
  rm -fv "$SITE"/$pattern
done
find "$SITE" -name __pycache__ -type d -prune -exec rm -rf {} +
t_unpack=$(date +%s)

echo "== compressing (xz -9, one thread per core)"
rm -f "$OUT"/site.tar.xz.part-* "$OUT"/site.tar.xz.sha256
tar -C "$OUT" --sort=name -cf - site | xz -9 -T0 > "$OUT/site.tar.xz"
sha256sum < "$OUT/site.tar.xz" > "$OUT/site.tar.xz.sha256"
total=$(stat -c %s "$OUT/site.tar.xz")
part_bytes=$((PART_MIB * 1048576))
(cd "$OUT" && split -n $(((total + part_bytes - 1) / part_bytes)) site.tar.xz site.tar.xz.part-)
rm -f "$OUT/site.tar.xz"
t_xz=$(date +%s)

{
  echo "# built $(date -u +%FT%TZ) by bench/real/gpu/build_bundle.sh"
  echo "# wheels: $(ls "$WHEELS"/*.whl | wc -l)"
  (cd "$WHEELS" && du -k -- *.whl | sort -rn)
} > "$OUT/manifest.txt"

echo "== sizes"
echo "wheels:   $(du -sh "$WHEELS" | cut -f1) in $(ls "$WHEELS"/*.whl | wc -l) files"
echo "site:     $(du -sh "$SITE" | cut -f1)"
ls -l "$OUT"/site.tar.xz.part-* | awk '{printf "part:     %s %.1f MiB\n", $9, $5/1048576}'
echo "bundle:   $(cat "$OUT"/site.tar.xz.part-* | wc -c | awk '{printf "%.1f MiB", $1/1048576}')"
echo "time:     download $((t_download - start)) s, unpack $((t_unpack - t_download)) s," \
     "xz $((t_xz - t_unpack)) s, total $((t_xz - start)) s"
[[ $KEEP_SITE == 1 ]] || rm -rf "$SITE"
