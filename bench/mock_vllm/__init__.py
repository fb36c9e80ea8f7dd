"""A CPU mock of a vLLM replica: prefix cache, continuous batching and vLLM's HTTP surface.

In-process use::

    app = build_app(MockOptions(profile="test-fast", speed=10))   # aiohttp web.Application
    server = await start_server(MockOptions(port=0))               # listening; server.url

As a subprocess: ``python -m bench.mock_vllm --port 8001 --profile llama-3-8b-h100``.
"""

from .options import MockOptions
from .profiles import PROFILES, TimingProfile
from .server import build_app
from .serving import MockServer, start_server

__all__ = ["PROFILES", "MockOptions", "MockServer", "TimingProfile", "build_app", "start_server"]
