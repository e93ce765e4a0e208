"""The must-show tests of ``pyagent serve``: a real uvicorn server on 127.0.0.1 (in a thread), the real
paged-attention engine on the tiny model written by ``pyagent model init-tiny``, and the official
``openai`` client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from pyagent.server import Backend, LocalServer, ResponseStore, create_app
from pyagent.server.local import load_engine

STREAM_ORDER_HEAD = ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"]
STREAM_ORDER_TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@dataclass
class Live:
    url: str
    engine: Any
    store: ResponseStore
    client: openai.OpenAI
    model: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("serve")
    subprocess.run([sys.executable, "-m", "pyagent", "model", "init-tiny", str(root / "tiny")], check=True,
                   capture_output=True, timeout=120)
    engine = load_engine(root / "tiny")
    store = ResponseStore(root / "responses.db")
    with LocalServer(create_app(Backend(engine), store)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        yield Live(server.base_url, engine, store, client, engine.model_name)
    store.close()


@pytest.fixture(scope="module")
def completing_input(live: Live) -> str:
    """An input the tiny random model answers with end-of-sequence (status completed) at temperature 0."""
    for i in range(64):
        text = f"question {i}"
        r = live.client.responses.create(model=live.model, input=text, temperature=0, max_output_tokens=48,
                                         store=False)
        if r.status == "completed":
            return text
    raise AssertionError("no input among 64 made the tiny model stop by itself")


LONG = 400


@pytest.fixture(scope="module")
def endless_input(live: Live) -> str:
    """An input the tiny model does NOT end by itself within LONG tokens at temperature 0, so a stream of it
    that is cut short can only have stopped because the server aborted it."""
    for i in range(16):
        text = f"tell me a long story {i}"
        r = live.client.responses.create(model=live.model, input=text, temperature=0, max_output_tokens=LONG,
                                         store=False)
        if r.status == "incomplete":
            return text
    raise AssertionError(f"every input made the tiny model stop within {LONG} tokens")


def _check_stream(events: list[Any]) -> str:
    """Asserts the API's event order and numbering; returns the streamed text."""
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == STREAM_ORDER_HEAD
    assert types[-4:-1] == STREAM_ORDER_TAIL
    assert types[-1] in ("response.completed", "response.incomplete")
    assert set(types[4:-4]) <= {"response.output_text.delta"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-4].text == text and events[-1].response.output_text == text
    return text


def test_create_with_and_without_stream(live: Live) -> None:
    plain = live.client.responses.create(model=live.model, input="Hello there", temperature=0,
                                         max_output_tokens=24)
    assert plain.object == "response" and plain.status == "incomplete"
    assert plain.incomplete_details is not None and plain.incomplete_details.reason == "max_output_tokens"
    assert plain.usage is not None and plain.usage.output_tokens == 24
    assert plain.usage.total_tokens == plain.usage.input_tokens + 24
    assert plain.output[0].type == "message" and plain.output[0].content[0].type == "output_text"
    events = list(live.client.responses.create(model=live.model, input="Hello there", temperature=0,
                                               max_output_tokens=24, stream=True))
    assert _check_stream(events) == plain.output_text
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == 24


def test_stream_helper_final_response_equals_non_streamed(live: Live, completing_input: str) -> None:
    plain = live.client.responses.create(model=live.model, input=completing_input, temperature=0,
                                         max_output_tokens=48)
    assert plain.status == "completed"
    with live.client.responses.stream(model=live.model, input=completing_input, temperature=0,
                                      max_output_tokens=48) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.id != plain.id
    assert final.output_text == plain.output_text == "".join(deltas)
    assert final.usage is not None and plain.usage is not None
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert live.client.responses.retrieve(final.id).output_text == plain.output_text


def test_retrieve_input_items_and_delete(live: Live) -> None:
    items: Any = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "input_text", "text": "How are you?"}]},
    ]
    created = live.client.responses.create(model=live.model, input=items, temperature=0, max_output_tokens=8,
                                           metadata={"run": "42"})
    got = live.client.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text and got.metadata == {"run": "42"}
    listed = list(live.client.responses.input_items.list(created.id, order="asc"))
    assert [(i.role, i.content[0].text) for i in listed] == [  # type: ignore[union-attr]
        ("developer", "Answer briefly."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?")]
    page = live.client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [i.id for i in page.data] == [i.id for i in listed[:2]] and page.has_more
    rest = live.client.responses.input_items.list(created.id, order="asc", after=page.data[-1].id)
    assert [i.id for i in rest.data] == [i.id for i in listed[2:]] and not rest.has_more
    newest = live.client.responses.input_items.list(created.id, limit=1)  # default order: desc
    assert newest.data[0].id == listed[-1].id
    live.client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        live.client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        live.client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        live.client.responses.delete(created.id)


def test_multi_turn_with_previous_response_id(live: Live) -> None:
    c, m = live.client, live.model
    first = c.responses.create(model=m, input="My name is Ada.", instructions="Be brief.", temperature=0,
                               max_output_tokens=6)
    second = c.responses.create(model=m, input="What is my name?", previous_response_id=first.id,
                                temperature=0, max_output_tokens=6)
    third = c.responses.create(model=m, input="Again?", previous_response_id=second.id, temperature=0,
                               max_output_tokens=6)
    # The same conversation sent explicitly (instructions are not carried over, as the API defines).
    explicit: Any = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "Again?"},
    ]
    same = c.responses.create(model=m, input=explicit, temperature=0, max_output_tokens=6)
    assert third.previous_response_id == second.id
    assert third.usage is not None and same.usage is not None and second.usage is not None
    assert third.usage.input_tokens == same.usage.input_tokens > second.usage.input_tokens
    assert third.output_text == same.output_text
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=m, input="x", previous_response_id="resp_missing")


# Words no other test sends, so these prompts' first blocks are in no cache before these tests run.
CACHE_PROBE = ("Prefix cache probe: quartz zebras judge the lazy sphinx, five dozen jugs of 0123456789, "
               "and the small model dreams in random numbers.")


def test_second_turn_reports_the_prefix_cache_hits(live: Live) -> None:
    c, m, kv = live.client, live.model, live.engine.kv_cache
    bs = kv.block_size
    hits = kv.hits
    # One output token: the first turn computes exactly its prompt, so exactly its full blocks get cached.
    first = c.responses.create(model=m, input=CACHE_PROBE, temperature=0, max_output_tokens=1)
    assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 0
    assert kv.hits == hits
    n1 = first.usage.input_tokens
    assert n1 >= 2 * bs
    second = c.responses.create(model=m, input="And then?", previous_response_id=first.id, temperature=0,
                                max_output_tokens=1)
    assert second.usage is not None
    cached = second.usage.input_tokens_details.cached_tokens
    print(f"second turn: input_tokens={second.usage.input_tokens} cached_tokens={cached} block_size={bs}")
    # The second prompt starts with the first one, so every full block of the first is served from cache.
    assert cached == (n1 // bs) * bs > 0 and cached % bs == 0
    assert cached == (kv.hits - hits) * bs  # what the engine's KV manager matched for this request
    assert c.responses.retrieve(second.id).usage == second.usage  # the stored response says the same


def test_chat_completions_report_cached_prompt_tokens(live: Live) -> None:
    messages: Any = [{"role": "user", "content": "Chat edition. " + CACHE_PROBE}]  # not the prefix above
    kv = live.engine.kv_cache
    bs = kv.block_size
    first = live.client.chat.completions.create(model=live.model, messages=messages, temperature=0, max_tokens=1)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    n = first.usage.prompt_tokens
    # The same prompt again: all its full blocks but the one holding the last token (always computed).
    expected = ((n - 1) // bs) * bs
    assert expected >= bs
    chunks = list(live.client.chat.completions.create(model=live.model, messages=messages, temperature=0,
                                                      max_tokens=1, stream=True,
                                                      stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens == n and usage.prompt_tokens_details.cached_tokens == expected
    again = live.client.chat.completions.create(model=live.model, messages=messages, temperature=0, max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == expected


def test_chat_completions_with_and_without_stream(live: Live) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    plain = live.client.chat.completions.create(model=live.model, messages=messages, temperature=0, max_tokens=16)
    assert plain.object == "chat.completion" and plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 16
    chunks = list(live.client.chat.completions.create(model=live.model, messages=messages, temperature=0,
                                                      max_tokens=16, stream=True,
                                                      stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


async def _one_stream(client: openai.AsyncOpenAI, model: str, i: int, disconnect: str | None
                      ) -> tuple[str, list[Any]]:
    events: list[Any] = []
    if disconnect:
        stream = await client.responses.create(model=model, input=disconnect, temperature=0,
                                               max_output_tokens=LONG, stream=True)
    else:
        stream = await client.responses.create(model=model, input=f"client {i} says hello", temperature=0.7,
                                               max_output_tokens=24, stream=True)
    async for event in stream:
        events.append(event)
        if disconnect and sum(e.type == "response.output_text.delta" for e in events) == 3:
            await stream.close()  # the client goes away mid-stream
            break
    return events[0].response.id, events


def _wait_free(engine: Any, start: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while engine.kv_cache.num_free_blocks != start and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(engine.kv_cache.num_free_blocks)


@pytest.mark.parametrize("disconnecting", [0, 8])
def test_32_concurrent_streams_complete_in_order_without_leaking_blocks(live: Live, endless_input: str,
                                                                         disconnecting: int) -> None:
    free_at_start = live.engine.kv_cache.num_free_blocks

    async def main() -> list[tuple[str, list[Any]]]:
        async with openai.AsyncOpenAI(base_url=live.url, api_key="unused", max_retries=0, timeout=120) as client:
            streams = [_one_stream(client, live.model, i, endless_input if i < disconnecting else None)
                       for i in range(32)]
            return await asyncio.gather(*streams)

    results = asyncio.run(main())
    for i, (rid, events) in enumerate(results):
        if i < disconnecting:
            assert [e.sequence_number for e in events] == list(range(len(events)))
            continue
        _check_stream(events)
        assert events[-1].response.id == rid
    assert _wait_free(live.engine, free_at_start) == free_at_start
    for rid, _ in results[:disconnecting]:
        stored = live.client.responses.retrieve(rid)
        deadline = time.monotonic() + 30  # blocks are freed just before the final status is recorded
        while stored.status == "in_progress" and time.monotonic() < deadline:
            time.sleep(0.02)
            stored = live.client.responses.retrieve(rid)
        assert stored.status == "cancelled"
        assert stored.usage is not None and stored.usage.output_tokens < LONG


BAD: list[tuple[str, bytes, int]] = [
    ("malformed JSON", b'{"model": "tiny", "input": "unterminated', 400),
    ("wrong type", b'{"model": "tiny", "input": {"text": 1}}', 400),
    ("unknown model", b'{"model": "no-such-model", "input": "x"}', 404),
    ("negative max tokens", b'{"model": "tiny", "input": "x", "max_output_tokens": -5}', 400),
    ("unsupported field", b'{"model": "tiny", "input": "x", "reasoning": {"effort": "high"}}', 400),
    ("10 MB input", orjson.dumps({"model": "tiny", "input": "y" * 10_000_000}), 413),
]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(live: Live) -> None:
    for why, body, status in BAD:
        body = body.replace(b'"tiny"', orjson.dumps(live.model))
        r = httpx.post(f"{live.url}/responses", content=body, headers={"content-type": "application/json"},
                       timeout=60)
        assert r.status_code == status, (why, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"], why
    for path in ("/responses/resp_unknown", "/responses/resp_unknown/input_items"):
        r = httpx.get(live.url + path, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.BadRequestError) as info:
        live.client.responses.create(model=live.model, input="x", max_output_tokens=-1)
    assert info.value.param == "max_output_tokens"  # type: ignore[attr-defined]
    # ignore_eos: the random tiny model may otherwise sample its end-of-text token within 4 tokens
    ok = live.client.responses.create(model=live.model, input="still here?", max_output_tokens=4,
                                      extra_body={"ignore_eos": True})
    assert ok.usage is not None and ok.usage.output_tokens == 4


def test_serve_command_end_to_end(live: Live, tmp_path: Path) -> None:
    """``pyagent serve`` as a subprocess: bearer auth from a key file (not argv), the key never printed,
    Ctrl-C stops it cleanly."""
    model_dir = tmp_path / "m"
    subprocess.run([sys.executable, "-m", "pyagent", "model", "init-tiny", str(model_dir)], check=True,
                   capture_output=True, timeout=120)
    key = "sk-test-" + "k" * 24
    key_file = tmp_path / "keys"
    key_file.write_text(f"# served keys\n{key}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyagent", "serve", "--model", str(model_dir), "--port", "0",
         "--store", str(tmp_path / "db.sqlite"), "--api-key-file", str(key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
        r = client.responses.create(model="m", input="hi", max_output_tokens=3)
        assert r.status == "incomplete" and (tmp_path / "db.sqlite").exists()
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    finally:
        proc.send_signal(2)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert key not in line + out


def test_start_local_server_for_agents(tmp_path: Path) -> None:
    """The in-process server ``improve --llm local:DIR`` uses: one per model directory, loopback only."""
    from pyagent.inference.tiny import init_tiny
    from pyagent.server.local import start_local_server

    model_dir = init_tiny(tmp_path / "agent-model")
    url = start_local_server(model_dir)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert start_local_server(str(model_dir)) == url
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["agent-model"]
    reply = client.chat.completions.create(model="agent-model", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
