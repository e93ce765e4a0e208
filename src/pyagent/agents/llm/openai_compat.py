"""A client for any OpenAI-compatible endpoint, over httpx, speaking the Responses API or Chat Completions.

``api="auto"`` tries ``/responses`` first and falls back to ``/chat/completions`` for the rest of the
run when the endpoint does not have it (404/405), since many local servers only speak the latter.
With a JSON schema the request carries ``text.format`` (Responses) or ``response_format`` (Chat
Completions), so a server that enforces schemas while decoding (PyAgent's own, vLLM, OpenAI) returns JSON
that matches; an endpoint that refuses the field (a 400 naming it) is asked again without it for the
rest of the run, and the agents then read the JSON from the free text. Rate limits (429) and server errors (5xx) and timeouts are retried a bounded number of times with
exponential backoff (``Retry-After`` honoured, capped). Prompts pass through ``redact()`` first.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import httpx

from pyagent.agents.llm.base import LLMError, LLMReply, UsageMeter, price_for

if TYPE_CHECKING:
    from pyagent.model.budget import Budget

__all__ = ["DEFAULT_BASE_URL", "OpenAICompatClient"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAICompatClient:
    """Metered, budgeted, retrying completions from one model at one endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api: str = "auto",
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        budget: Budget | None = None,
        meter: UsageMeter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        temperature: float | None = None,
    ) -> None:
        if api not in ("auto", "responses", "chat"):
            raise ValueError(f"api must be auto, responses or chat, not {api!r}")
        if not model:
            raise ValueError("a model name is required")
        self.model = model
        # sent with every request when set; None leaves it to the endpoint (some hosted models refuse it)
        self.temperature = temperature
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.api = api
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.budget = budget
        self.meter = meter or UsageMeter()
        self._transport = transport
        self.structured = True  # send schemas until the endpoint shows it does not take them

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    @staticmethod
    def _payload_responses(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        items = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
        body: dict[str, Any] = {
            "model": model,
            "input": items,
            "max_output_tokens": max_tokens,
            "store": False,
        }
        if system:
            body["instructions"] = system
        return body

    @staticmethod
    def _parse_responses(data: dict[str, Any]) -> tuple[str, int, int]:
        parts: list[str] = []
        for item in data.get("output") or []:
            if item.get("type") == "message":
                for content in item.get("content") or []:
                    if content.get("type") == "output_text":
                        parts.append(str(content.get("text", "")))
        if not parts and isinstance(data.get("output_text"), str):
            parts.append(data["output_text"])
        if not parts:
            raise LLMError("the Responses API reply holds no output_text")
        usage = data.get("usage") or {}
        return "".join(parts), int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))

    @staticmethod
    def _parse_chat(data: dict[str, Any]) -> tuple[str, int, int]:
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError("the Chat Completions reply holds no choices[0].message.content") from exc
        if not isinstance(text, str):
            raise LLMError("the Chat Completions reply's content is not text")
        usage = data.get("usage") or {}
        return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after")
            if after:
                try:
                    return min(float(after), self.max_backoff)
                except ValueError:
                    pass
        return float(min(self.backoff * (1 << min(attempt, 16)), self.max_backoff))

    def _with_schema(self, api: str, body: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
        if schema is None or not self.structured:
            return body
        if api == "responses":
            return body | {"text": {"format": {"type": "json_schema", "name": "edit", "schema": schema}}}
        return body | {"response_format": {"type": "json_schema", "json_schema": {"name": "edit", "schema": schema}}}

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 2048,
                       schema: dict[str, Any] | None = None) -> LLMReply:
        from pyagent.redact import redact

        if self.budget is not None:
            self.budget.check()
        clean = [{"role": m["role"], "content": redact(m["content"])} for m in messages]
        start = time.monotonic()
        attempts = 0
        last_error = "no attempt made"
        async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as http:
            while attempts <= self.max_retries:
                api = "chat" if self.api == "chat" else "responses"
                if api == "responses":
                    url, body = (
                        f"{self.base_url}/responses",
                        self._payload_responses(self.model, clean, max_tokens),
                    )
                else:
                    body = {"model": self.model, "messages": clean, "max_tokens": max_tokens}
                    url = f"{self.base_url}/chat/completions"
                body = self._with_schema(api, body, schema)
                if self.temperature is not None:
                    body["temperature"] = self.temperature
                response: httpx.Response | None = None
                try:
                    response = await http.post(url, json=body, headers=self._headers())
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code in (404, 405) and self.api == "auto" and api == "responses":
                        self.api = "chat"  # endpoint without the Responses API; not a retry
                        continue
                    if response.status_code < 300:
                        return self._finish(response, api, start, attempts + 1)
                    if response.status_code == 400 and schema is not None and self.structured and any(
                            f in response.text for f in ("response_format", "text.format", "json_schema")):
                        self.structured = False  # the endpoint does not take schemas; not a retry
                        continue
                    last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                    if response.status_code not in _RETRY_STATUS:
                        raise LLMError(f"{url} answered {last_error}")
                attempts += 1
                if attempts > self.max_retries:
                    break
                await asyncio.sleep(self._delay(attempts - 1, response))
        raise LLMError(f"no answer from {self.base_url} after {attempts} attempt(s): {last_error}")

    def _finish(self, response: httpx.Response, api: str, start: float, attempts: int) -> LLMReply:
        try:
            data = response.json()
        except ValueError as exc:
            raise LLMError(f"the endpoint answered non-JSON: {response.text[:200]!r}") from exc
        if not isinstance(data, dict):
            raise LLMError("the endpoint answered JSON that is not an object")
        text, tin, tout = self._parse_responses(data) if api == "responses" else self._parse_chat(data)
        pin, pout = price_for(self.model)
        cost = (tin * pin + tout * pout) / 1e6
        reply = LLMReply(text, self.model, tin, tout, cost, time.monotonic() - start, attempts)
        self.meter.record(reply)
        if self.budget is not None:
            self.budget.charge(tokens=reply.tokens, cost=cost)  # raises once the budget is passed
        return reply
