"""A compiled router as the yardstick: nginx relaying to the same upstream, measured the same way.

The targets of the overhead check ("at the level of compiled routers") only mean something next to
a compiled router run on the same machine, under the same load, in the same rounds. nginx is the
reverse proxy most vLLM fleets already run; here it is set up as a streaming relay would be: one
worker, keep-alive connections upstream, no response buffering (each chunk goes out as it comes),
no access log. Debian's `nginx-light` is installed with apt-get when the binary is missing and
the check runs as root, by the helper that installs `make image-check`'s podman.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.endpoints import start_server
from deploy.checks.host import CheckError, ensure_installed

CONFIG = """\
worker_processes 1;
daemon off;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    upstream replica {{ server {upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location = /ready {{ return 200 "ok"; }}
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """nginx's path, installing Debian's nginx-light first when it is missing and we may."""
    try:
        ensure_installed({"nginx": "nginx-light"})
    except CheckError as error:
        print(f"nginx: {error}")
    return shutil.which("nginx")


def render_config(state: Path, port: int, upstream: str) -> str:
    """The configuration for a relay on 127.0.0.1:`port` to `upstream` ("host:port")."""
    return CONFIG.format(state=state, port=port, upstream=upstream)


def start_nginx(binary: str, port: int, upstream: str, stack: ExitStack) -> list[int]:
    """Start nginx relaying 127.0.0.1:`port` to `upstream`; stopped when `stack` closes. Returns
    the pids whose CPU is nginx's: the master and its worker."""
    state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nginx-ref-")))
    config = state / "nginx.conf"
    config.write_text(render_config(state, port, upstream))
    master = start_server([binary, "-c", str(config), "-p", str(state)], stack)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the worker is forked once the master has read its config
        children = Path("/proc") / str(master.pid) / "task" / str(master.pid) / "children"
        workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        if workers:
            return [master.pid, *workers]
        if master.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not start: {(state / 'error.log').read_text()[-2000:]}")
