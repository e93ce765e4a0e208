"""Turning ``--llm`` and ``--llm-base-url`` into a client.

``--llm MODEL`` talks to an OpenAI-compatible endpoint. ``--llm local:DIR`` runs a checkpoint with
PyAgent's own engine through the ``local`` backend the CLI passes in (``pyagent.cli.local_llm``);
agents never import the server themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pyagent.agents.llm.base import LLMClient, UsageMeter

if TYPE_CHECKING:
    from pyagent.model.budget import Budget

__all__ = ["LLMConfigError", "LocalBackend", "make_llm", "preflight"]

# factory(target, budget, meter): the client for `--llm local:TARGET`, supplied by the composition root.
LocalBackend = Callable[[str, "Budget | None", UsageMeter], LLMClient]


class LLMConfigError(ValueError):
    """The --llm settings cannot work; the message says what to change."""


def make_llm(
    spec: str,
    *,
    base_url: str | None = None,
    api: str = "auto",
    budget: Budget | None = None,
    meter: UsageMeter | None = None,
    timeout: float = 120.0,
    local: LocalBackend | None = None,
) -> LLMClient:
    meter = meter or UsageMeter()
    spec = spec.strip()
    if not spec:
        raise LLMConfigError("--llm needs a model name (e.g. gpt-4.1-mini) or local:DIR")
    if spec.startswith("local:"):
        directory = spec.removeprefix("local:")
        if not directory:
            raise LLMConfigError("--llm local:DIR needs the model directory after 'local:'")
        if local is None:
            raise LLMConfigError(
                "--llm local:DIR is not wired here (the caller passed no local backend); "
                "serve the model with `pyagent serve` and use --llm MODEL --llm-base-url http://127.0.0.1:PORT/v1"
            )
        return local(directory, budget, meter)
    from pyagent.agents.llm.openai_compat import OpenAICompatClient

    try:
        return OpenAICompatClient(
            spec, base_url=base_url, api=api, budget=budget, meter=meter, timeout=timeout
        )
    except ValueError as exc:
        raise LLMConfigError(str(exc)) from exc


def preflight(spec: str, *, base_url: str | None = None, timeout: float = 3.0) -> None:
    """Fail before any task, in one line, when ``--llm`` cannot work: no key, or nothing listening.

    Only a TCP connection is opened (nothing is sent), so no prompt or key leaves the machine here.
    """
    import os
    import socket
    from urllib.parse import urlsplit

    from pyagent.agents.llm.openai_compat import DEFAULT_BASE_URL

    spec = spec.strip()
    if not spec:
        raise LLMConfigError("--llm needs a model name (e.g. gpt-4.1-mini) or local:DIR")
    if spec.startswith("local:"):
        return
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if url == DEFAULT_BASE_URL and not os.environ.get("OPENAI_API_KEY"):
        raise LLMConfigError(
            f"--llm {spec} talks to {url}, which needs OPENAI_API_KEY (not set); set it, or point "
            "--llm-base-url at an OpenAI-compatible server (e.g. `pyagent serve`)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMConfigError(f"--llm-base-url {url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise LLMConfigError(
            f"--llm {spec}: cannot reach {url} ({exc.strerror or exc}); start the server or fix --llm-base-url"
        ) from exc
