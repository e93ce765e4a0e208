"""Structured output, log-probabilities and ``n`` through the official ``openai`` client, against a real
uvicorn server (loopback) on the real engine with the tiny random model: whatever tokens the random
weights prefer, the grammar engine must keep the text valid JSON that matches the schema."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from pyagent.server import Backend, LocalServer, ResponseStore, create_app
from pyagent.server.local import load_engine


class Edit(BaseModel):
    docstring: str = Field(max_length=12)
    lines: int = Field(ge=0, le=99)
    kind: Literal["add", "fix"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, str, Any]]:
    root = tmp_path_factory.mktemp("structured")
    subprocess.run([sys.executable, "-m", "pyagent", "model", "init-tiny", str(root / "tiny")], check=True,
                   capture_output=True, timeout=120)
    engine = load_engine(root / "tiny")
    store = ResponseStore(root / "responses.db")
    with LocalServer(create_app(Backend(engine), store)) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120), \
            engine.model_name, engine
    store.close()


MESSAGES = [{"role": "user", "content": "describe the edit"}]


def test_chat_json_schema_output_parses_and_validates(tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny
    for seed in range(4):
        r = client.chat.completions.parse(model=model, messages=MESSAGES, response_format=Edit, temperature=1.0,
                                          seed=seed, max_tokens=200)  # type: ignore[arg-type]
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        assert isinstance(choice.message.parsed, Edit)
        assert Edit.model_validate_json(choice.message.content or "") == choice.message.parsed


def test_json_object_mode_gives_a_json_object(tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny
    # An unbounded object may run past max_tokens on random weights; what was finished must parse.
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
              "additionalProperties": False}
    r = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=64,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "flag", "schema": schema}})
    assert isinstance(json.loads(r.choices[0].message.content or "")["a"], bool)
    r = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=400,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content or ""
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_responses_text_format_parses_and_echoes_the_format(tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny
    r = client.responses.parse(model=model, input="describe the edit", text_format=Edit, temperature=0,
                               max_output_tokens=200)
    assert r.status == "completed"
    assert isinstance(r.output_parsed, Edit)
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"
    streamed = client.responses.create(model=model, input="describe the edit", temperature=0,
                                       max_output_tokens=200, stream=True,
                                       text={"format": {"type": "json_schema", "name": "Edit",
                                                        "schema": Edit.model_json_schema()}})
    deltas = "".join(e.delta for e in streamed if e.type == "response.output_text.delta")
    assert Edit.model_validate_json(deltas) == r.output_parsed  # greedy: the same constrained text


def test_concurrent_constrained_and_free_requests_in_one_batch(tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny

    class Other(BaseModel):
        ok: bool
        n: int = Field(ge=-5, le=5)

    def constrained(i: int) -> BaseModel | str:
        fmt: type[BaseModel] = Edit if i % 3 == 0 else Other
        if i % 3 == 2:  # free text beside constrained ones
            r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, seed=i)
            return r.choices[0].message.content or ""
        r = client.chat.completions.parse(model=model, messages=MESSAGES, response_format=fmt, seed=i,
                                          max_tokens=200)
        parsed = r.choices[0].message.parsed
        assert parsed is not None
        return parsed

    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(constrained, range(9)))
    assert [type(r) for r in results] == [Edit, Other, str] * 3


def test_a_schema_the_grammar_engine_cannot_enforce_is_a_400_naming_the_field(
        tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "bad", "schema": bad}})
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == "response_format"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model, input="x", max_output_tokens=8,
                                text={"format": {"type": "json_schema", "name": "bad", "schema": bad}})
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == "text.format"


def _check_logprobs(entries: list[Any], k: int, text: str) -> None:
    for e in entries:
        assert len(e.top_logprobs) == k
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(v <= 0 for v in tops)
        assert sum(math.exp(v) for v in tops) <= 1 + 1e-6
        assert e.top_logprobs[0].token == e.token and math.isclose(e.logprob, tops[0])  # greedy picks the top
        assert bytes(e.bytes or []) == e.token.encode() or "\ufffd" in e.token
    # the tokens' bytes spell the text (an end-of-sequence token is special: it is not in the text)
    spelled = b"".join(bytes(e.bytes or []) for e in entries).decode("utf-8", errors="replace")
    assert spelled.startswith(text) and len(spelled) - len(text) <= max(len(e.token) for e in entries)


def test_logprobs_and_top_logprobs(tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny
    r = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12,
                                       logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None and r.usage is not None
    assert len(choice.logprobs.content) == r.usage.completion_tokens
    _check_logprobs(choice.logprobs.content, 3, choice.message.content or "")
    plain = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12)
    assert plain.choices[0].logprobs is None
    streamed = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12,
                                              logprobs=True, top_logprobs=3, stream=True)
    entries = [e for chunk in streamed for c in chunk.choices if c.logprobs and c.logprobs.content
               for e in c.logprobs.content]
    assert [e.model_dump() for e in entries] == [e.model_dump() for e in choice.logprobs.content]

    resp = client.responses.create(model=model, input="describe the edit", temperature=0, max_output_tokens=12,
                                   top_logprobs=2, include=["message.output_text.logprobs"])
    part = resp.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs is not None
    assert len(part.logprobs) == resp.usage.output_tokens  # type: ignore[union-attr]
    _check_logprobs(part.logprobs, 2, part.text)  # type: ignore[arg-type]


def test_n_choices(tiny: tuple[openai.OpenAI, str, Any]) -> None:
    client, model, _ = tiny
    kw: dict[str, Any] = {"model": model, "messages": MESSAGES, "temperature": 1.0, "max_tokens": 16, "seed": 3}
    r = client.chat.completions.create(n=3, logprobs=True, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1  # sampled independently
    assert r.choices[0].message.content == client.chat.completions.create(**kw).choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens == sum(
        len(c.logprobs.content or []) for c in r.choices if c.logprobs is not None)
    streamed = client.chat.completions.create(n=3, stream=True, **kw)
    got: dict[int, str] = {}
    finished: set[int] = set()
    for chunk in streamed:
        for c in chunk.choices:
            got[c.index] = got.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                finished.add(c.index)
    assert finished == {0, 1, 2}
    assert [got[i] for i in range(3)] == texts


DOC_SRC = "def grade(n):\n    if n > 90:\n        return 'A'\n    return 'B'\n\n\nclass Report:\n    def render(self):\n        return ''\n"


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_random_weights_answer_under_the_docstring_schema_and_the_agent_judges_the_prose(
        tiny: tuple[openai.OpenAI, str, Any], tmp_path: Path, api: str) -> None:
    """The agent's schema reaches the server (text.format or response_format) and the grammar holds the
    random model to it: the reply is JSON with exactly the asked name and one sentence. Random words then
    name nothing in the code, so the agent refuses them (one request per definition, no repairs) and the
    file is left as it was, or changed in its docstrings only."""
    import asyncio
    import re

    from pyagent.agents.docstrings import strip_docstrings
    from pyagent.agents.edits import parse_reply
    from pyagent.agents.llm.openai_compat import OpenAICompatClient
    from pyagent.agents.refactor import DOCSTRING_PATTERN, DocstringAgent, docstring_schema
    from pyagent.model.context import CascadeContext
    from pyagent.model.priority import AgentPriority
    from pyagent.model.task import AgentTask

    client, model, _ = tiny
    llm = OpenAICompatClient(model, base_url=str(client.base_url).rstrip("/"), api_key="", api=api)
    reply = asyncio.run(llm.complete([{"role": "user", "content": "Docstring for grade?"}], max_tokens=256,
                                     schema=docstring_schema(["grade"])))
    data = parse_reply(reply.text)
    assert set(data) == {"grade"} and re.fullmatch(DOCSTRING_PATTERN, data["grade"]), reply.text
    (tmp_path / "m.py").write_text(DOC_SRC)
    task = AgentTask("t", "docstring", "llm", "m.py", ("m.py",), AgentPriority.STANDARD, CascadeContext.root("x"),
                     {"names": ["grade", "Report", "Report.render"]})
    outcome = asyncio.run(DocstringAgent(llm, max_repairs=0).run(task, tmp_path))
    new = (tmp_path / "m.py").read_text()
    assert strip_docstrings(new) == strip_docstrings(DOC_SRC)
    assert new != DOC_SRC or (outcome.error is not None and "docstring of" in outcome.error), outcome
    assert llm.meter.totals()["calls"] == 1 + 3 and llm.structured
