"""The OpenAI-compatible client against a real loopback HTTP server with scripted replies
(a test double of a paid LLM API; see tests/agents/llm_server.py)."""

from __future__ import annotations

import asyncio

import pytest

from pyagent.agents.llm.base import LLMClient, LLMError, UsageMeter
from pyagent.agents.llm.factory import LLMConfigError, make_llm
from pyagent.agents.llm.openai_compat import OpenAICompatClient
from pyagent.model.budget import Budget
from pyagent.model.errors import BudgetExceeded
from tests.agents.llm_server import Reply, Script, scripted_server

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def _client(url: str, **kw: object) -> OpenAICompatClient:
    kw.setdefault("backoff", 0.01)
    return OpenAICompatClient("gpt-4o-mini", base_url=url, api_key="sk-test-key-0123456789abcdef", **kw)  # type: ignore[arg-type]


def test_responses_api_text_tokens_and_cost() -> None:
    script = Script([Reply(text="hi there", input_tokens=1000, output_tokens=500)])
    seen: list[dict[str, object]] = []
    meter = UsageMeter(on_call=lambda reply, totals: seen.append(totals))
    with scripted_server(script) as url:
        reply = asyncio.run(_client(url, meter=meter).complete(MSGS))
    assert reply.text == "hi there"
    assert (reply.input_tokens, reply.output_tokens) == (1000, 500)
    assert reply.cost == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    req = script.requests[0]
    assert req["path"] == "/v1/responses"
    assert req["json"]["instructions"] == "be brief"
    assert req["json"]["input"] == [{"role": "user", "content": "hello"}]
    assert req["headers"]["Authorization"] == "Bearer sk-test-key-0123456789abcdef"
    assert seen == [meter.totals()] and meter.totals()["tokens"] == 1500


def test_chat_completions_api() -> None:
    script = Script([Reply(text="from chat", input_tokens=7, output_tokens=3)])
    with scripted_server(script) as url:
        reply = asyncio.run(_client(url, api="chat").complete(MSGS))
    assert reply.text == "from chat" and reply.tokens == 10
    assert script.requests[0]["path"] == "/v1/chat/completions"
    assert script.requests[0]["json"]["messages"][0] == {"role": "system", "content": "be brief"}


def test_auto_falls_back_to_chat_when_responses_is_missing() -> None:
    script = Script([Reply(text="ok")], paths_404=("/v1/responses",))
    with scripted_server(script) as url:
        client = _client(url)
        assert asyncio.run(client.complete(MSGS)).text == "ok"
    assert [r["path"] for r in script.requests] == ["/v1/responses", "/v1/chat/completions"]
    assert client.api == "chat"


def test_rate_limit_is_retried_with_backoff() -> None:
    script = Script(
        [
            Reply(status=429, raw=b"{}", headers={"Retry-After": "0"}),
            Reply(status=503, raw=b"{}"),
            Reply(text="ok"),
        ]
    )
    with scripted_server(script) as url:
        reply = asyncio.run(_client(url).complete(MSGS))
    assert reply.text == "ok" and reply.attempts == 3


def test_retries_are_bounded() -> None:
    script = Script([Reply(status=500, raw=b"{}") for _ in range(10)])
    with scripted_server(script) as url, pytest.raises(LLMError, match="after 3 attempt"):
        asyncio.run(_client(url, max_retries=2).complete(MSGS))
    assert len(script.requests) == 3


def test_timeout_is_retried_then_reported() -> None:
    script = Script([Reply(text="late", delay=2.0), Reply(text="late", delay=2.0)])
    with scripted_server(script) as url, pytest.raises(LLMError, match="ReadTimeout"):
        asyncio.run(_client(url, timeout=0.3, max_retries=1).complete(MSGS))
    assert len(script.requests) == 2


def test_client_error_is_not_retried() -> None:
    script = Script([Reply(status=401, raw=b'{"error": "bad key"}'), Reply(text="never")])
    with scripted_server(script) as url, pytest.raises(LLMError, match="HTTP 401"):
        asyncio.run(_client(url).complete(MSGS))
    assert len(script.requests) == 1


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"output": []}'])
def test_malformed_reply_is_an_error(raw: bytes) -> None:
    with scripted_server(Script([Reply(raw=raw)])) as url, pytest.raises(LLMError):
        asyncio.run(_client(url).complete(MSGS))


def test_budget_is_a_hard_stop() -> None:
    budget = Budget(tokens=100)
    script = Script([Reply(text="a", input_tokens=90, output_tokens=30), Reply(text="b")])
    with scripted_server(script) as url:
        client = _client(url, budget=budget)
        with pytest.raises(BudgetExceeded, match="token budget"):
            asyncio.run(client.complete(MSGS))
        with pytest.raises(BudgetExceeded):
            asyncio.run(client.complete(MSGS))
    assert len(script.requests) == 1  # the second call never reached the endpoint
    assert budget.used()["tokens"] == 120


def test_secrets_are_redacted_from_prompts() -> None:
    script = Script([Reply(text="ok")])
    msgs = [{"role": "user", "content": "the key is sk-proj-abcdefghijklmnopqrstuvwx, fix the code"}]
    with scripted_server(script) as url:
        asyncio.run(_client(url).complete(msgs))
    sent = script.requests[0]["json"]["input"][0]["content"]
    assert "sk-proj-abcdefghijklmnopqrstuvwx" not in sent and "[REDACTED]" in sent


def test_factory_errors_and_local_hook() -> None:
    with pytest.raises(LLMConfigError, match="model name"):
        make_llm("  ")
    with pytest.raises(LLMConfigError, match="model directory"):
        make_llm("local:")
    with pytest.raises(LLMConfigError, match="no local backend"):
        make_llm("local:/some/dir")  # the caller did not wire `--llm local:` in
    seen: list[str] = []

    def backend(target: str, budget: Budget | None, meter: UsageMeter) -> LLMClient:
        seen.append(target)
        return make_llm("stand-in", base_url="http://127.0.0.1:9/v1", meter=meter)

    assert make_llm("local:/models/x", local=backend).model == "stand-in" and seen == ["/models/x"]
    client = make_llm("gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    assert client.model == "gpt-4o-mini"
