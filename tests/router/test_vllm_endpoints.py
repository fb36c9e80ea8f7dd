"""vLLM's endpoints beyond chat and completions: the Anthropic Messages API, tokenize, pooling,
score, rerank, generate, and audio uploads (multipart, streamed through, never parsed)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Replica, RouterClient, Upstreams

PROMPTED = [
    ("/tokenize", {"model": "m", "prompt": "Once upon a time"}),
    ("/tokenize", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("/pooling", {"model": "m", "input": "pool this"}),
    ("/classify", {"model": "m", "input": ["classify this", "and this"]}),
    ("/score", {"model": "m", "text_1": "left", "text_2": ["right"]}),
    ("/v1/score", {"model": "m", "text_1": "left", "text_2": "right"}),
    ("/rerank", {"model": "m", "query": "which?", "documents": ["a", "b"]}),
    ("/v1/rerank", {"model": "m", "query": "which?", "documents": ["a", "b"]}),
    ("/v2/rerank", {"model": "m", "query": "which?", "documents": ["a", "b"]}),
    ("/inference/v1/generate", {"model": "m", "token_ids": [1, 2, 3], "sampling_params": {}}),
    ("/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
]


@pytest.mark.parametrize(("path", "body"), PROMPTED, ids=[p for p, _ in PROMPTED])
async def test_vllms_other_endpoints_are_forwarded_and_routed_by_their_prompt(
    upstreams: Upstreams, router: RouterClient, path: str, body: dict[str, Any]
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    replicas = set()
    for _ in range(3):
        response = await client.post(path, json=body)
        assert response.status == 200, await response.text()
        assert (await response.json())["path"] == path
        assert response.headers["x-router-route"].startswith("prefix/")
        replicas.add(response.headers["x-router-replica"])
    assert len(replicas) == 1  # one prompt, one replica
    response = await client.post(path, json=body, headers={"X-Session-Id": "mine"})
    assert response.headers["x-router-route"].startswith("header/")


async def test_detokenize_without_a_prompt_is_forwarded_to_the_least_loaded(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    response = await client.post("/detokenize", json={"model": "m", "tokens": [1, 2]})
    assert response.status == 200
    assert response.headers["x-router-route"] == "none/no_key"


async def test_paths_vllm_does_not_serve_are_still_a_404_of_the_router(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(1)
    client = await router([url for _, url in ups])
    for method, path in [("GET", "/tokenize"), ("POST", "/admin"), ("POST", "/v3/rerank")]:
        response = await client.request(method, path, json={})
        assert response.status in (404, 405)
        assert "x-router-replica" not in response.headers


# --- the Anthropic Messages API


def messages(system: Any, first: str = "Review the diff.", stream: bool = True) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "max_tokens": 64,
        "stream": stream,
        "system": system,
        "messages": [{"role": "user", "content": [{"type": "text", "text": first}]}],
    }


async def test_messages_are_routed_by_key_and_streamed(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(4)
    client = await router([url for _, url in ups])
    response = await client.post("/v1/messages", json=messages("Be terse."))
    assert response.status == 200
    assert response.headers["x-router-route"] == "prefix/placed"
    text = await response.text()
    assert text.count("event: ") == 6 and "message_stop" in text
    plain = await client.post("/v1/messages", json=messages("Be terse.", stream=False))
    assert (await plain.json())["type"] == "message"
    assert plain.headers["x-router-route"] == "prefix/home"
    keyed = await client.post(
        "/v1/messages", json=messages("Be terse."), headers={"X-Claude-Code-Session-Id": "c1"}
    )
    assert keyed.headers["x-router-route"] == "header/placed"


async def test_the_system_prompt_tells_messages_conversations_apart(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    for system in ("You review Go.", [{"type": "text", "text": "You review Rust."}]):
        await (await client.post("/v1/messages", json=messages(system))).read()
    sent = [seen["headers"]["X-Session-Id"] for fake, _ in ups for seen in fake.seen.requests]
    assert len(set(sent)) == 2  # same first message, different system prompts: two keys


async def test_a_json_string_metadata_user_id_keys_on_its_session(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    body = {**messages("x"), "metadata": {"user_id": '{"device_id": "d", "session_id": "s-42"}'}}
    response = await client.post("/v1/messages", json=body)
    assert response.headers["x-router-route"] == "body/placed"
    sent = [seen["headers"]["X-Session-Id"] for fake, _ in ups for seen in fake.seen.requests]
    assert sent == ["s-42"]


# --- audio uploads


BOUNDARY = "vsr-boundary"


def multipart(audio: bytes) -> bytes:
    """A transcription request as the openai SDK sends it: a model field and a file."""
    model = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
    file = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    return model.encode() + file.encode() + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
async def test_audio_uploads_stream_through_byte_for_byte_and_unparsed(
    upstreams: Upstreams, router: RouterClient, path: str
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    audio = b"RIFF" + bytes(range(256)) * 2000 + b'{"not": json'  # binary, and not JSON
    sent = multipart(audio)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    response = await client.post(
        path, data=sent, headers={"Content-Type": content_type, "X-Session-Id": "caller-1"}
    )
    assert response.status == 200, await response.text()
    assert response.headers["x-router-route"].startswith("header/")
    (seen,) = [s for fake, _ in ups for s in fake.seen.requests]
    assert hashlib.sha256(seen["raw"]).digest() == hashlib.sha256(sent).digest()
    assert seen["headers"]["Content-Type"] == content_type
    assert seen["headers"]["X-Session-Id"] == "caller-1"


async def test_uploads_beyond_the_body_limit_or_without_a_length_are_refused(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(1)
    client = await router([url for _, url in ups], max_body_bytes=1000)
    path = "/v1/audio/transcriptions"
    too_big = await client.post(
        path, data=b"x" * 2000, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert too_big.status == 413
    assert (await too_big.json())["error"]["code"] == "body_too_large"

    async def chunked() -> Any:
        yield b"--b\r\n"

    no_length = await client.post(
        path, data=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert no_length.status == 411
    assert not ups[0][0].seen.requests


async def test_an_upload_reaches_the_replica_while_the_client_is_still_sending(
    router: RouterClient, replica: Replica
) -> None:
    half = 64 * 1024
    arrived = asyncio.Event()

    async def transcribe(request: web.Request) -> web.Response:
        received = 0
        while chunk := await request.content.readany():
            received += len(chunk)
            if received >= half:
                arrived.set()  # the first half is here: the router did not wait for the rest
        return web.json_response({"text": "ok", "bytes": received})

    client = await router([await replica(web.post("/v1/audio/transcriptions", transcribe))])

    async def body() -> Any:
        yield b"x" * half
        await asyncio.wait_for(arrived.wait(), timeout=5)
        yield b"y" * half

    response = await client.post(
        "/v1/audio/transcriptions",
        data=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                 "Content-Length": str(2 * half)},
    )  # fmt: skip
    assert response.status == 200, await response.text()
    assert (await response.json())["bytes"] == 2 * half
