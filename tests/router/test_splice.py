"""A stream's chunks after the first, written to the client from the replica's data callback."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import RouterClient, Upstreams, chat


async def test_a_client_that_stops_reading_holds_the_replica_back(
    upstreams: Upstreams, router: RouterClient
) -> None:
    # 48 MiB of stream: far more than the kernel's socket buffers, so a router that kept
    # reading would have it all in memory while the client sleeps.
    ((fake, url),) = await upstreams(1, chunks=192, chunk_padding=256 * 1024)
    client = await router([url])
    response = await client.post("/v1/chat/completions", json=chat("s"))
    assert response.status == 200
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: ")
    await asyncio.sleep(1.0)  # the client reads nothing
    assert fake.seen.completed == 0  # the replica is held back, not drained into the router
    assert fake.seen.running == 1
    rest = await asyncio.wait_for(response.read(), timeout=30)
    events = [e for e in (first + rest).split(b"\n\n") if e]
    assert len(events) == 193
    assert events[-1] == b"data: [DONE]"
    assert fake.seen.completed == 1


async def test_a_replica_silent_mid_stream_ends_it_with_an_error_event(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, chunks=3, chunk_delay=2.0)
    client = await router([url], idle_timeout=0.3)
    response = await client.post("/v1/chat/completions", json=chat("s"))
    assert response.status == 200
    body = await asyncio.wait_for(response.read(), timeout=5)
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b"data: ")
    assert events[-1].startswith(b"event: error\ndata: ")
    assert json.loads(events[-1].split(b"data: ", 1)[1])["error"]["code"] == 502
    await asyncio.wait_for(fake.cancel_event.wait(), timeout=3)  # and the replica let go


async def test_an_http_1_0_client_gets_the_stream_unframed(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1, chunks=5, chunk_delay=0.05)
    client = await router([url])
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = json.dumps(chat("s")).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    answer = await asyncio.wait_for(reader.read(), timeout=5)  # to the close: no framing
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"transfer-encoding" not in head.lower()
    events = [e for e in payload.split(b"\n\n") if e]
    assert len(events) == 6
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"


async def test_many_streams_at_once_arrive_whole_and_in_order(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1, chunks=40, chunk_delay=0.005)
    client = await router([url])

    async def one(i: int) -> list[bytes]:
        response = await client.post(
            "/v1/chat/completions", json=chat(f"s{i}"), headers={"X-Session-Id": f"s{i}"}
        )
        return [e for e in (await response.read()).split(b"\n\n") if e]

    for events in await asyncio.gather(*(one(i) for i in range(20))):
        contents = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
        assert contents == [f"t{i} " for i in range(40)]
        assert events[-1] == b"data: [DONE]"
