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

__all__ = ["LLMConfigError", "LocalBackend", "make_llm"]

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
