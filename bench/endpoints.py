"""The local servers the benchmarks and tests start: a free port, starting one, waiting until it
answers, asking it.

Blocking and standard-library only (urllib), so that the runner, the real-engine tools, the GPU
host script and the tests share one definition; async code awaits `wait_until_up_async`, which
runs the same loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol

from bench import ROOT

_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
OK = range(200, 201)


class NotUp(RuntimeError):
    """An endpoint did not answer in time, or the process that serves it exited first."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode  # the process's exit status; None: it timed out


class Process(Protocol):
    """What `wait_until_up` needs of a child process (subprocess.Popen has it)."""

    def poll(self) -> int | None: ...


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that nothing listens on now."""
    for _ in range(100):
        first = free_port()
        if first + count > 65536:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def router_command(port: int, *flags: str) -> list[str]:
    """`python -m router` on 127.0.0.1:``port`` with ``flags``, to start from the repo root."""
    return [sys.executable, "-m", "router", "--host", "127.0.0.1", "--port", str(port), *flags]


def start_server(command: list[str], stack: ExitStack, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """A quiet child process started from the repository root (or ``cwd``: another checkout),
    stopped when ``stack`` closes (SIGINT, as Ctrl-C would, then SIGKILL after 10 s)."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def stop() -> None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    stack.callback(stop)
    return process


def http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One request with an optional JSON body; (status, body) for any status, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Any:
    """The JSON answer of a request that must succeed (RuntimeError on any status but 200)."""
    status, raw = http(method, url, body, headers, timeout)
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}: {raw[:200]!r}")
    return json.loads(raw)


def get_text(url: str, timeout: float = 10.0) -> str:
    """The body of ``GET url`` (/metrics and the like); RuntimeError on any status but 200."""
    status, raw = http("GET", url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}")
    return raw.decode()


def answers(url: str, ok: range = OK, timeout: float = 2.0) -> bool:
    """True when ``GET url`` answers with a status in ``ok``."""
    try:
        return http("GET", url, timeout=timeout)[0] in ok
    except (OSError, HTTPException):  # refused, reset, timed out, garbled
        return False


def wait_until_up(
    url: str,
    process: Process | None = None,
    timeout: float = 60.0,
    interval: float = 0.2,
    ok: range = OK,
) -> None:
    """Poll ``GET url`` until it answers with a status in ``ok`` (200; an external router's
    path: ``range(200, 500)``); NotUp if ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and (code := process.poll()) is not None:
            raise NotUp(f"the process serving {url} exited with {code}", code)
        if answers(url, ok):
            return
        if time.monotonic() >= deadline:
            raise NotUp(f"{url} did not come up in {timeout:.0f} s")
        time.sleep(interval)


async def wait_until_up_async(
    url: str,
    process: Process | None = None,
    timeout: float = 20.0,
    interval: float = 0.1,
    ok: range = OK,
) -> None:
    """`wait_until_up` for a coroutine: the same loop in a worker thread."""
    await asyncio.to_thread(wait_until_up, url, process, timeout, interval, ok)


def cache_config_info(metrics_text: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` (num_gpu_blocks, block_size, ...)."""
    match = _INFO_LINE.search(metrics_text)
    if not match:
        raise ValueError("no vllm:cache_config_info on /metrics")
    return dict(_LABEL.findall(match.group("labels")))
