"""Small helpers for the local servers the benchmarks and tests start and read."""

from __future__ import annotations

import re
import socket

_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cache_config_info(metrics_text: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` (num_gpu_blocks, block_size, ...)."""
    match = _INFO_LINE.search(metrics_text)
    if not match:
        raise ValueError("no vllm:cache_config_info on /metrics")
    return dict(_LABEL.findall(match.group("labels")))
