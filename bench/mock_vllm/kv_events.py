"""The mock's KV-cache event publisher: vLLM's wire format and sockets (docs/mock-vllm.md).

Configured like vLLM, `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv"}'`. Each batch goes
out on a PUB socket as `[topic, 8-byte big-endian sequence, msgpack [ts, [events...], rank]]`
with vLLM 0.32's map-shaped events, and is kept (the last `buffer_steps`) for the replay socket, a
ROUTER that answers `[b"", start sequence]` with every buffered batch from there, then the end
marker `[b"", b"", -1, b""]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)


@dataclass(frozen=True)
class KvEventsConfig:
    """The fields of vLLM's --kv-events-config that the mock honours."""

    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    topic: str = ""
    buffer_steps: int = 10_000

    @classmethod
    def parse(cls, text: str | None) -> KvEventsConfig | None:
        """The config in `text` (JSON), or None when events are off."""
        if not text:
            return None
        raw = json.loads(text)
        if not raw.get("enable_kv_cache_events") or raw.get("publisher", "zmq") == "null":
            return None
        return cls(
            raw.get("endpoint", cls.endpoint),
            raw.get("replay_endpoint"),
            raw.get("topic", ""),
            int(raw.get("buffer_steps", cls.buffer_steps)),
        )


class EventPublisher:
    """PUB + replay ROUTER on the running loop; `publish` never blocks."""

    def __init__(self, config: KvEventsConfig, rank: int = 0) -> None:
        self.config = config
        self.rank = rank
        self.context = zmq.asyncio.Context()
        self.topic = config.topic.encode()
        self.sequence = 0
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self.encoder = msgspec.msgpack.Encoder()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.bind(config.endpoint)
        self.replay: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        if config.replay_endpoint:
            self.replay = self.context.socket(zmq.ROUTER)
            self.replay.setsockopt(zmq.LINGER, 0)
            self.replay.bind(config.replay_endpoint)
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: list[dict[str, object]], live: bool = True) -> int:
        """Send one batch; returns its sequence number. `live=False` only buffers it, as if
        the live message had been lost on the way (for tests of gap handling)."""
        sequence = self.sequence
        self.sequence += 1
        payload = self.encoder.encode([time.time(), events, self.rank])
        self.buffer.append((sequence, payload))
        if live:
            with contextlib.suppress(zmq.Again):  # a PUB socket drops rather than block
                self.pub.send_multipart(
                    [self.topic, sequence.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK
                )
        return sequence

    async def _serve_replay(self) -> None:
        assert self.replay is not None
        while True:
            frames = await self.replay.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start = frames
            first = int.from_bytes(start, "big")
            for sequence, payload in list(self.buffer):
                if sequence >= first:
                    await self.replay.send_multipart(
                        [client, b"", self.topic, sequence.to_bytes(8, "big"), payload]
                    )
            await self.replay.send_multipart([client, b"", b"", END_OF_REPLAY, b""])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.pub.close(linger=0)
        if self.replay is not None:
            self.replay.close(linger=0)
        self.context.term()
