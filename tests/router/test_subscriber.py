"""KV-event subscribers against the mock's publisher (vLLM's sockets and wire format), on
127.0.0.1: catch-up on connect, gaps, restarts and reconnects, and the router wired end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import zmq.asyncio

from bench.endpoints import free_port
from bench.mock_vllm import MockOptions, start_server
from bench.mock_vllm.kv_events import EventPublisher, KvEventsConfig
from bench.mock_vllm.tokenizer import TOKENIZER_FOLDER
from router.app import FLEET
from router.config import Config, EventEndpoints, event_endpoints, parse_replica
from router.core.block_index import BlockIndex, prompt_blocks
from router.subscriber import RankSubscriber
from tests.conftest import RouterClient

URL = "http://replica:8000"
SIZE = 2


def stored(hashes: list[int], tokens: list[int], parent: int | None = None) -> dict[str, Any]:
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": SIZE,
        "lora_id": None,
        "medium": "GPU",
    }


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def ports() -> KvEventsConfig:
    return KvEventsConfig(
        f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", topic="kv"
    )


class Harness:
    """A publisher and one rank subscriber feeding an index."""

    def __init__(self, config: KvEventsConfig, replay: bool = True) -> None:
        self.config = config
        self.index = BlockIndex()
        self.index.set_replicas([URL])
        self.context = zmq.asyncio.Context()
        replay_endpoint = (config.replay_endpoint or "") if replay else ""
        endpoints = EventEndpoints(0, config.endpoint, replay_endpoint)
        self.subscriber = RankSubscriber(URL, endpoints, self.index, self.context, "kv")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.subscriber.run())

    def depth(self, tokens: list[int]) -> int:
        return self.index.prefix_blocks(prompt_blocks(tokens, SIZE))[URL]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        self.context.term()


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(config: KvEventsConfig, replay: bool = True) -> Harness:
        made.append(Harness(config, replay))
        return made[-1]

    yield make
    for h in made:
        await h.close()


async def test_batches_published_before_the_subscriber_came_are_caught_up(
    harness: Callable[..., Harness],
) -> None:
    config = ports()
    publisher = EventPublisher(config)
    try:
        publisher.publish([stored([1, 2], [1, 2, 3, 4])])
        publisher.publish([stored([3], [5, 6], parent=2)])
        h = harness(config)
        h.start()
        await until(lambda: h.depth([1, 2, 3, 4, 5, 6, 7]) == 3)
        state = h.subscriber.state
        assert state.connected and state.expected == 2 and state.replays >= 1
        publisher.publish([{"type": "BlockRemoved", "block_hashes": [3], "medium": "GPU"}])
        await until(lambda: h.depth([1, 2, 3, 4, 5, 6, 7]) == 2)
        assert state.lag_s is not None and state.lag_s < 1.0
    finally:
        await publisher.close()


async def test_a_sequence_gap_is_filled_from_the_replay_socket(
    harness: Callable[..., Harness],
) -> None:
    config = ports()
    publisher = EventPublisher(config)
    try:
        h = harness(config)
        h.start()
        await until(lambda: h.subscriber.state.connected)
        await asyncio.sleep(0.3)  # the subscription reaches the publisher
        publisher.publish([stored([1], [1, 2])])
        publisher.publish([stored([2], [3, 4], parent=1)], live=False)  # lost on the way
        publisher.publish([stored([3], [5, 6], parent=2)])
        await until(lambda: h.depth([1, 2, 3, 4, 5, 6, 7]) == 3)
        state = h.subscriber.state
        assert (state.gaps, state.lost, state.expected) == (1, 0, 3)
    finally:
        await publisher.close()


async def test_without_a_replay_socket_a_gap_is_counted_as_lost(
    harness: Callable[..., Harness],
) -> None:
    config = ports()
    publisher = EventPublisher(config)
    try:
        h = harness(config, replay=False)
        h.start()
        await until(lambda: h.subscriber.state.connected)
        await asyncio.sleep(0.3)
        publisher.publish([stored([1], [1, 2])])
        publisher.publish([stored([2], [3, 4], parent=1)], live=False)
        publisher.publish([stored([3], [5, 6], parent=2)])  # its parent was never seen
        await until(lambda: h.subscriber.state.expected == 3)
        state = h.subscriber.state
        assert (state.gaps, state.lost) == (1, 1)
        assert h.depth([1, 2, 3, 4, 5, 6, 7]) == 1
        stats = h.index.stats(URL)
        assert stats is not None and stats.orphans == 1
    finally:
        await publisher.close()


async def test_a_restarted_publisher_is_reconnected_and_its_old_blocks_forgotten(
    harness: Callable[..., Harness],
) -> None:
    config = ports()
    publisher = EventPublisher(config)
    h = harness(config)
    h.start()
    for n in range(3):
        publisher.publish([stored([10 + n], [n, n])])
    await until(lambda: h.depth([0, 0]) == 1 and h.subscriber.state.expected == 3)
    await publisher.close()  # the engine dies ...
    await until(lambda: not h.subscriber.state.connected)
    await asyncio.sleep(0.5)
    publisher = EventPublisher(config)  # ... and comes back on the same ports, empty
    try:
        publisher.publish([stored([20], [7, 7])])
        await until(lambda: h.depth([7, 7]) == 1)
        state = h.subscriber.state
        assert state.connected and state.connects == 2 and state.restarts == 1
        assert h.depth([0, 0]) == 0  # what the old process held is gone
    finally:
        await publisher.close()


def test_endpoints_per_rank_follow_vllms_port_offsets() -> None:
    config = Config(replica=["http://a:8000"], kv_events_port=5557, kv_replay_port=5600)
    dns = parse_replica("http://10.0.0.7:8000")
    assert event_endpoints(dns, config) == [
        EventEndpoints(0, "tcp://10.0.0.7:5557", "tcp://10.0.0.7:5600")
    ]
    spec = parse_replica("http://a:8000#kv_events=tcp://a:6000&kv_ranks=2")
    assert event_endpoints(spec, config) == [
        EventEndpoints(0, "tcp://a:6000", "tcp://a:5600"),
        EventEndpoints(1, "tcp://a:6001", "tcp://a:5601"),
    ]
    assert event_endpoints(dns, Config(replica=["http://a:8000"])) == []


async def test_the_router_indexes_mock_replicas_events_and_shows_them(
    router: RouterClient,
) -> None:
    """Two mocks publishing events; the router's subscribers fill its index, which, with the
    router's tokenization of the mock's shipped tokenizer files, predicts what the mock then
    reports cached; /router/replicas and /metrics show the subscriptions."""
    mocks, specs = [], []
    for _ in range(2):
        config = ports()
        events = (
            '{"enable_kv_cache_events": true, "publisher": "zmq", '
            f'"endpoint": "{config.endpoint}", "replay_endpoint": "{config.replay_endpoint}", '
            '"topic": "kv"}'
        )
        options = MockOptions(port=0, profile="test-fast", model="mock", kv_events_config=events)
        mock = await start_server(options)
        mocks.append(mock)
        specs.append(f"{mock.url}#kv_events={config.endpoint}&kv_replay={config.replay_endpoint}")
    try:
        client = await router(specs, scrape_interval=0.2, tokenizer=str(TOKENIZER_FOLDER))
        index, prompts = client.app[FLEET].blocks, client.app[FLEET].prompts
        assert prompts is not None
        messages: list[dict[str, Any]] = [{"role": "user", "content": "word " * 300}]
        checked = 0
        async with aiohttp.ClientSession() as http:
            for turn in range(3):
                body = {"model": "mock", "messages": messages, "max_tokens": 20, "stream": False}
                tokens = prompts.request_tokens("/v1/chat/completions", body)
                assert tokens is not None
                predicted = index.cached_tokens(tokens)
                async with http.post(
                    str(client.make_url("/v1/chat/completions")),
                    json=body,
                    headers={"X-Session-Id": "s"},
                ) as response:
                    answer = await response.json()
                    served = response.headers["x-router-replica"]
                cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
                assert predicted[served] == cached, turn
                checked += cached > 0
                text = answer["choices"][0]["message"]["content"]
                messages = [*messages, {"role": "assistant", "content": text}]
                messages.append({"role": "user", "content": f"next {turn}"})
                # the engine's events for this turn reach the index
                await until(lambda: index.cached_tokens(tokens)[served] > 0)  # noqa: B023
        assert checked == 2
        status = await (await client.get("/router/replicas")).json()
        rows = {row["url"]: row for row in status["replicas"]}
        for mock in mocks:
            events = rows[mock.url]["kv_events"]
            assert events["connected"] and events["block_size"] == 16
            assert events["capacity_blocks"] == 512  # the test-fast profile's, from /metrics
        assert rows[served]["kv_events"]["blocks"]["GPU"] > 0
        text = await (await client.get("/metrics")).text()
        assert f'router_kv_events_connected{{replica="{served}"}} 1.0' in text
        assert f'router_kv_index_blocks{{medium="GPU",replica="{served}"}}' in text
    finally:
        for mock in mocks:
            await mock.close()
