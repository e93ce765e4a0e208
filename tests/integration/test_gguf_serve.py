"""``pyagent serve --model FILE.gguf`` as a real subprocess with the real SmolLM2 Q4_1 file, answered
through the official ``openai`` client: a coherent answer, the model's own chat template, and the
sampling knobs (penalties, top_k/min_p, min_tokens/ignore_eos, seed) accepted or refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel, Field

from tests.model_files import smollm2_gguf

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, str]]:
    model = smollm2_gguf()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyagent", "serve", "--model", str(model), "--port", "0",
                                 "--store", ":memory:"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            text = log.read_text()
            if " at http://" in text:
                url = text.split(" at ", 1)[1].split(" ", 1)[0]
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pyagent serve did not start:\n{text}")
            else:
                time.sleep(0.2)
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120), model.stem
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_capital_of_france(client: tuple[openai.OpenAI, str]) -> None:
    c, model = client
    assert [m.id for m in c.models.list()] == [model]
    r = c.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in (r.choices[0].message.content or "")
    # the file's template adds its default system prompt: far more prompt tokens than the question itself
    assert r.usage is not None and r.usage.prompt_tokens > 30
    resp = c.responses.create(model=model, input="What is the capital of France?", temperature=0,
                              max_output_tokens=32)
    assert "Paris" in resp.output_text


def test_sampling_knobs(client: tuple[openai.OpenAI, str]) -> None:
    c, model = client
    # min_tokens + ignore_eos (vLLM's extensions): exactly max_tokens tokens even past the answer
    r = c.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=40,
                                  extra_body={"ignore_eos": True, "min_tokens": 40})
    assert r.usage is not None and r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length"
    plain = c.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=40,
                                      extra_body={"ignore_eos": True})
    penalised = c.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=40,
                                          frequency_penalty=2.0, presence_penalty=1.0,
                                          extra_body={"ignore_eos": True, "repetition_penalty": 1.5})
    assert penalised.choices[0].message.content != plain.choices[0].message.content
    kw = {"model": model, "messages": QUESTION, "temperature": 1.0, "max_tokens": 16, "seed": 7,
          "extra_body": {"top_k": 20, "min_p": 0.05}}
    assert c.chat.completions.create(**kw).choices[0].message.content == \
        c.chat.completions.create(**kw).choices[0].message.content  # type: ignore[call-overload]


@pytest.mark.parametrize(("extra", "param"), [({"min_p": 1.5}, "min_p"), ({"top_k": -4}, "top_k"),
                                              ({"repetition_penalty": 0}, "repetition_penalty"),
                                              ({"min_tokens": 99}, "min_tokens"), ({"n": 0}, "n"),
                                              ({"top_logprobs": 2}, "top_logprobs"),
                                              ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                                              ({"response_format": {"type": "json_schema", "json_schema": {
                                                  "name": "x", "schema": {"type": "no-such-type"}}}},
                                               "response_format")])
def test_bad_sampling_values_are_refused_by_name(client: tuple[openai.OpenAI, str], extra: dict[str, object],
                                                 param: str) -> None:
    c, model = client
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, extra_body=extra)
    body = info.value.body
    assert isinstance(body, dict) and body.get("param") == param, body


def test_responses_sampling_knobs(client: tuple[openai.OpenAI, str]) -> None:
    """The Responses API takes the same knobs as chat (non-standard ones in extra_body)."""
    c, model = client
    question = "What is the capital of France?"
    r = c.responses.create(model=model, input=question, temperature=0, max_output_tokens=40,
                           extra_body={"ignore_eos": True, "min_tokens": 40})
    assert r.usage is not None and r.usage.output_tokens == 40 and r.status == "incomplete"
    plain = c.responses.create(model=model, input=question, temperature=0, max_output_tokens=40,
                               extra_body={"ignore_eos": True})
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 1.5}):
        penalised = c.responses.create(model=model, input=question, temperature=0, max_output_tokens=40,
                                       extra_body={"ignore_eos": True, **penalty})
        assert penalised.output_text != plain.output_text, penalty
    # at temperature 1, top_k=1 and min_p=1 leave only the most likely token: the greedy answer
    for cut in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = c.responses.create(model=model, input=question, temperature=1.0, max_output_tokens=40,
                                     extra_body={"ignore_eos": True, **cut})
        assert sampled.output_text == plain.output_text, cut


@pytest.mark.parametrize(("extra", "param"), [({"min_p": 1.5}, "min_p"), ({"top_k": -4}, "top_k"),
                                              ({"repetition_penalty": 0}, "repetition_penalty"),
                                              ({"frequency_penalty": 2.5}, "frequency_penalty"),
                                              ({"presence_penalty": -3}, "presence_penalty"),
                                              ({"min_tokens": 99}, "min_tokens"),
                                              ({"top_k": "many"}, "top_k")])
def test_bad_responses_sampling_values_are_refused_by_name(client: tuple[openai.OpenAI, str],
                                                           extra: dict[str, object], param: str) -> None:
    c, model = client
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model=model, input="Hi", max_output_tokens=8, extra_body=extra)
    body = info.value.body
    assert isinstance(body, dict) and body.get("param") == param, body


class Capital(BaseModel):
    city: str = Field(max_length=40)
    country: str = Field(max_length=40)


def test_structured_answer_logprobs_and_n(client: tuple[openai.OpenAI, str]) -> None:
    c, model = client
    r = c.chat.completions.parse(model=model, messages=QUESTION, response_format=Capital, temperature=0,
                                 max_tokens=64)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Capital) and "Paris" in parsed.city
    resp = c.responses.parse(model=model, input="What is the capital of France?", text_format=Capital,
                             temperature=0, max_output_tokens=64)
    assert resp.output_parsed == parsed
    many = c.chat.completions.create(model=model, messages=QUESTION, temperature=0.8, seed=1, n=2, max_tokens=24,
                                     logprobs=True, top_logprobs=2,
                                     response_format={"type": "json_schema", "json_schema": {
                                         "name": "Capital", "schema": Capital.model_json_schema()}})
    assert len(many.choices) == 2
    for choice in many.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in choice.logprobs.content)
        assert (choice.message.content or "").startswith('{"city": ')


def test_generate_and_chat_cli_with_a_gguf_file(tmp_path: Path) -> None:
    model = smollm2_gguf()
    done = subprocess.run([sys.executable, "-m", "pyagent", "chat", "--model", str(model), "--temperature", "0",
                           "--max-tokens", "24", "What is the capital of France?"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    # interactive: two turns from stdin, the second sees the first
    done = subprocess.run([sys.executable, "-m", "pyagent", "chat", "--model", str(model), "--temperature", "0",
                           "--max-tokens", "24"], input="What is the capital of France?\nAnd of Italy?\n\n",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and "Rome" in done.stdout
