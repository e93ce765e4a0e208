"""HTTP behaviour of the server over a real socket, on the engine STAND-IN (tests/server/standin.py).

The must-show scenarios on the real engine are in tests/integration/test_server_openai.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.server.conftest import Running
from tests.server.standin import StandInEngine


def _post(run: Running, body: Any, *, raw: bytes | None = None, path: str = "/responses") -> httpx.Response:
    if raw is not None:
        return httpx.post(run.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(run.url + path, json=body, timeout=30)


def _assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return dict(err)


BAD_BODIES: list[tuple[str, Any, int, str | None]] = [
    ("input of the wrong type", {"model": "standin", "input": 5}, 400, "input"),
    ("model of the wrong type", {"model": 7, "input": "x"}, 400, "model"),
    ("missing input", {"model": "standin"}, 400, "input"),
    ("string for a number", {"model": "standin", "input": "x", "max_output_tokens": "5"}, 400, "max_output_tokens"),
    ("negative max tokens", {"model": "standin", "input": "x", "max_output_tokens": -3}, 400, "max_output_tokens"),
    ("temperature out of range", {"model": "standin", "input": "x", "temperature": 9}, 400, "temperature"),
    ("unknown model", {"model": "gpt-x", "input": "x"}, 404, "model"),
    ("unsupported field", {"model": "standin", "input": "x", "tools": []}, 400, "tools"),
    ("unknown field", {"model": "standin", "input": "x", "tempreature": 1}, 400, "tempreature"),
    ("json_schema without a name", {"model": "standin", "input": "x", "text": {"format": {"type": "json_schema",
                                                                                         "schema": {}}}}, 400,
     "text.format.name"),
    ("unknown output format", {"model": "standin", "input": "x", "text": {"format": {"type": "yaml"}}}, 400,
     "text.format"),
    ("too many top logprobs", {"model": "standin", "input": "x", "top_logprobs": 21}, 400, "top_logprobs"),
    ("bad part type", {"model": "standin", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
     400, None),
    ("unknown previous response", {"model": "standin", "input": "x", "previous_response_id": "resp_nope"}, 404,
     "previous_response_id"),
    ("array body", [1, 2], 400, None),
    ("empty input list", {"model": "standin", "input": []}, 400, "input"),
    ("stream of the wrong type", {"model": "standin", "input": "x", "stream": "yes"}, 400, "stream"),
]


@pytest.mark.parametrize(("why", "body", "status", "param"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_requests_get_openai_errors(serve: Callable[..., Running], why: str, body: Any, status: int,
                                        param: str | None) -> None:
    run = serve()
    _assert_error(_post(run, body), status, param)
    ok = _post(run, {"model": "standin", "input": "still serving"})
    assert ok.status_code == 200 and ok.json()["status"] == "completed"


def test_malformed_json_and_huge_body(serve: Callable[..., Running]) -> None:
    run = serve()
    assert _assert_error(_post(run, None, raw=b'{"model": "standin", "input": '), 400)["code"] == "invalid_json"
    huge = orjson.dumps({"model": "standin", "input": "x" * 10_000_000})
    assert _assert_error(_post(run, None, raw=huge), 413)["code"] == "request_too_large"
    _assert_error(httpx.get(run.url + "/responses/resp_unknown"), 404)
    _assert_error(httpx.get(run.url + "/no/such/route"), 404)
    assert _assert_error(_post(run, None, raw=b""), 400)["code"] == "missing_body"
    _assert_error(httpx.get(run.url + "/responses/x", params={"stream": "maybe"}), 400, "stream")
    _assert_error(httpx.get(run.url + "/responses/x", params={"starting_after": -5}), 400, "starting_after")
    _assert_error(httpx.put(run.url + "/responses"), 405)
    assert _post(run, {"model": "standin", "input": "ok"}).status_code == 200


def test_chat_completion_errors(serve: Callable[..., Running]) -> None:
    run = serve()
    _assert_error(_post(run, {"model": "standin", "messages": []}, path="/chat/completions"), 400, "messages")
    _assert_error(_post(run, {"model": "standin", "messages": [{"role": "user", "content": "x"}], "n": 17},
                        path="/chat/completions"), 400, "n")
    _assert_error(_post(run, {"model": "standin", "messages": [{"role": "user", "content": "x"}],
                              "top_logprobs": 2}, path="/chat/completions"), 400, "top_logprobs")
    _assert_error(_post(run, {"model": "standin", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
                        path="/chat/completions"), 400, "response_format.json_schema.name")
    _assert_error(_post(run, {"model": "standin", "messages": [{"role": "user", "content": "x"}], "tools": []},
                        path="/chat/completions"), 400, "tools")
    for stop in (["x"] * 33, ["x" * 1001], "x" * 1001):
        err = _assert_error(_post(run, {"model": "standin", "messages": [{"role": "user", "content": "x"}],
                                        "stop": stop}, path="/chat/completions"), 400, "stop")
        assert "at most 32 stop sequences" in err["message"]
    at_limit = _post(run, {"model": "standin", "messages": [{"role": "user", "content": "x"}],
                           "stop": [f"never{i}" + "z" * 990 for i in range(32)]}, path="/chat/completions")
    assert at_limit.status_code == 200 and at_limit.json()["choices"][0]["message"]["content"], at_limit.text


def test_bearer_auth(serve: Callable[..., Running]) -> None:
    run = serve(api_keys=("s3cret",))
    assert _assert_error(httpx.get(run.url + "/models"), 401)["code"] == "invalid_api_key"
    bad = httpx.get(run.url + "/models", headers={"Authorization": "Bearer nope"})
    _assert_error(bad, 401)
    client = openai.OpenAI(base_url=run.url, api_key="s3cret")
    assert [m.id for m in client.models.list()] == ["standin"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=run.url, api_key="wrong").responses.create(model="standin", input="x")


def test_truncation_disabled_refuses_and_auto_drops_oldest_turns(serve: Callable[..., Running]) -> None:
    engine = StandInEngine(max_model_len=120, stop_after=3)
    run = serve(engine)
    long_history = [{"role": "user", "content": f"turn {i} " + "y" * 20} for i in range(6)]
    err = _assert_error(_post(run, {"model": "standin", "input": long_history}), 400, "input")
    assert err["code"] == "context_length_exceeded"
    ok = _post(run, {"model": "standin", "input": long_history, "truncation": "auto"})
    assert ok.status_code == 200, ok.text
    prompt = engine.tokenizer.decode(engine.prompts[-1])
    assert "turn 5" in prompt and "turn 0" not in prompt and len(engine.prompts[-1]) <= 119
    alone = [{"role": "user", "content": "z" * 500}]
    assert _assert_error(_post(run, {"model": "standin", "input": alone, "truncation": "auto"}), 400)[
        "code"] == "context_length_exceeded"


def test_store_false_is_not_kept_and_metadata_round_trips(serve: Callable[..., Running]) -> None:
    run = serve()
    client = openai.OpenAI(base_url=run.url, api_key="x")
    gone = client.responses.create(model="standin", input="x", store=False)
    assert gone.status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    kept = client.responses.create(model="standin", input="x", metadata={"task": "t1"}, instructions="be brief")
    again = client.responses.retrieve(kept.id)
    assert again.metadata == {"task": "t1"} and again.instructions == "be brief"
    assert again.output_text == kept.output_text


def test_stream_replay_from_the_store(serve: Callable[..., Running]) -> None:
    run = serve()
    client = openai.OpenAI(base_url=run.url, api_key="x")
    events = list(client.responses.create(model="standin", input="replay me", stream=True))
    rid = events[0].response.id
    with httpx.stream("GET", f"{run.url}/responses/{rid}", params={"stream": "true", "starting_after": 3}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    replayed = [orjson.loads(line[6:]) for line in lines]
    assert [e["sequence_number"] for e in replayed] == [e.sequence_number for e in events[4:]]
    assert [e["type"] for e in replayed] == [e.type for e in events[4:]]
    assert replayed[-1]["response"]["output"][0]["content"][0]["text"] == events[-1].response.output_text


def _stream_until_cancelled(url: str, body: dict[str, Any], seen: list[dict[str, Any]],
                            started: threading.Event) -> None:
    with httpx.stream("POST", url + "/responses", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(orjson.loads(line[6:]))
                if seen[-1]["type"] == "response.output_text.delta":
                    started.set()


def test_cancel_stops_a_running_response(serve: Callable[..., Running]) -> None:
    engine = StandInEngine(delay=0.02)
    run = serve(engine)
    free = engine.kv_cache.num_free_blocks
    seen: list[dict[str, Any]] = []
    started = threading.Event()
    body = {"model": "standin", "input": "long", "stream": True, "max_output_tokens": 500}
    t = threading.Thread(target=_stream_until_cancelled, args=(run.url, body, seen, started))
    t.start()
    assert started.wait(10)
    rid = seen[0]["response"]["id"]
    cancelled = httpx.post(f"{run.url}/responses/{rid}/cancel", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    t.join(10)
    assert seen[-1]["type"] == "response.failed" and seen[-1]["response"]["status"] == "cancelled"
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert engine.kv_cache.num_free_blocks == free
    assert httpx.get(f"{run.url}/responses/{rid}").json()["status"] == "cancelled"
    assert _assert_error(httpx.post(f"{run.url}/responses/resp_x/cancel"), 404)["code"] == "not_found"


def test_client_disconnect_aborts_generation(serve: Callable[..., Running]) -> None:
    engine = StandInEngine(delay=0.02)
    run = serve(engine)
    free = engine.kv_cache.num_free_blocks
    body = {"model": "standin", "input": "long", "stream": True, "max_output_tokens": 2000}
    with httpx.stream("POST", run.url + "/responses", json=body, timeout=30) as r:
        lines = r.iter_lines()
        rid = None
        for line in lines:
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                rid = rid or event["response"]["id"]
                if event["type"] == "response.output_text.delta":
                    break
    deadline = time.monotonic() + 10
    while engine.kv_cache.num_free_blocks != free and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.kv_cache.num_free_blocks == free
    stored = _settled(run, str(rid))
    assert stored["status"] == "cancelled"
    assert stored["usage"]["output_tokens"] < 2000


@pytest.mark.parametrize("path", ["/responses", "/chat/completions"])
def test_non_streamed_request_is_aborted_when_the_client_gives_up(serve: Callable[..., Running], path: str) -> None:
    engine = StandInEngine(delay=0.02)
    run = serve(engine)
    free = engine.kv_cache.num_free_blocks
    if path == "/responses":
        body: dict[str, Any] = {"model": "standin", "input": "long", "max_output_tokens": 2000}
    else:
        body = {"model": "standin", "messages": [{"role": "user", "content": "long"}], "max_tokens": 2000}
    payload = orjson.dumps(body)
    url = httpx.URL(run.url + path)
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        head = (f"POST {url.path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n")
        sock.sendall(head.encode() + payload)
        assert engine.started.wait(30)  # generating now; the client hangs up without reading the answer
    deadline = time.monotonic() + 30
    while engine.kv_cache.num_free_blocks != free and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.kv_cache.num_free_blocks == free
    if path == "/responses":
        (rid,) = _stored_ids(run)
        stored = _settled(run, rid)
        assert stored["status"] == "cancelled" and stored["usage"]["output_tokens"] < 2000


def _settled(run: Running, rid: str, timeout: float = 30.0) -> dict[str, Any]:
    """The stored response once it has left in_progress (blocks are freed just before it is recorded)."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(f"{run.url}/responses/{rid}", timeout=30).json()
        if body["status"] != "in_progress" or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def _stored_ids(run: Running) -> list[str]:
    import sqlite3

    with sqlite3.connect(run.store.path) as db:
        return [r[0] for r in db.execute("SELECT id FROM responses")]


def test_live_replay_follows_a_response_in_progress(serve: Callable[..., Running]) -> None:
    engine = StandInEngine(delay=0.01)
    run = serve(engine)
    seen: list[dict[str, Any]] = []
    started = threading.Event()
    body = {"model": "standin", "input": "follow me", "stream": True, "max_output_tokens": 60}
    t = threading.Thread(target=_stream_until_cancelled, args=(run.url, body, seen, started))
    t.start()
    assert started.wait(10)
    rid = seen[0]["response"]["id"]
    with httpx.stream("GET", f"{run.url}/responses/{rid}", params={"stream": "true", "starting_after": 1},
                      timeout=30) as r:
        replay = [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    t.join(10)
    assert replay == seen[2:]  # the same events, live, from sequence number 2 to the end
    assert replay[-1]["type"] == "response.incomplete"


def test_follow_up_prompt_extends_the_previous_one(serve: Callable[..., Running]) -> None:
    """The prefix-cache property: turn 2's prompt starts with turn 1's prompt and answer, token for token."""
    engine = StandInEngine(stop_after=5)
    run = serve(engine)
    client = openai.OpenAI(base_url=run.url, api_key="x")
    first = client.responses.create(model="standin", input="hello")
    client.responses.create(model="standin", input="more", previous_response_id=first.id)
    turn1, turn2 = engine.prompts[-2:]
    answer = engine.tokenizer.encode(" " + first.output_text)
    assert turn2[: len(turn1) + len(answer)] == turn1 + answer


def test_metadata_limits(serve: Callable[..., Running]) -> None:
    run = serve()
    too_many = {f"k{i}": "v" for i in range(17)}
    _assert_error(_post(run, {"model": "standin", "input": "x", "metadata": too_many}), 400, "metadata")
    long_value = {"k": "v" * 513}
    _assert_error(_post(run, {"model": "standin", "input": "x", "metadata": long_value}), 400)
    surrogate = b'{"model": "standin", "input": "bad \\ud800 text"}'
    message = _assert_error(_post(run, None, raw=surrogate), 400)["message"]
    assert "Unicode" in message and "'input'" in message and "None" not in message
    nested = b'{"model": "standin", "input": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\\udc00"}]}'
    assert "'input[1].content'" in _assert_error(_post(run, None, raw=nested), 400)["message"]
