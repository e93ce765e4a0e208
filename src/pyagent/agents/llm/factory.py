"""Turning ``--llm`` and ``--llm-base-url`` into a client.

``--llm MODEL`` talks to an OpenAI-compatible endpoint. ``--llm local:DIR`` runs a checkpoint with
PyAgent's own engine through the factory registered in ``LOCAL_BACKENDS`` (the inference/server
component installs it); without one, the user gets a clear error.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyagent.agents.llm.base import LLMClient, UsageMeter

if TYPE_CHECKING:
    from pyagent.model.budget import Budget

__all__ = ["LOCAL_BACKENDS", "LLMConfigError", "make_llm"]

# name -> factory(dir, budget, meter). The hook for `--llm local:DIR`.
LOCAL_BACKENDS: dict[str, Callable[[str, Budget | None, UsageMeter], LLMClient]] = {}


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
) -> LLMClient:
    meter = meter or UsageMeter()
    spec = spec.strip()
    if not spec:
        raise LLMConfigError("--llm needs a model name (e.g. gpt-4.1-mini) or local:DIR")
    if spec.startswith("local:"):
        directory = spec.removeprefix("local:")
        if not directory:
            raise LLMConfigError("--llm local:DIR needs the model directory after 'local:'")
        factory = LOCAL_BACKENDS.get("local")
        if factory is None:
            with contextlib.suppress(ImportError):  # the server registers LOCAL_BACKENDS["local"] on import
                importlib.import_module("pyagent.cli.local_llm")
            factory = LOCAL_BACKENDS.get("local")
        if factory is None:
            raise LLMConfigError(
                "--llm local:DIR needs PyAgent's inference engine, which is not available in this build; "
                "serve the model with `pyagent serve` and use --llm MODEL --llm-base-url http://127.0.0.1:PORT/v1"
            )
        return factory(directory, budget, meter)
    from pyagent.agents.llm.openai_compat import OpenAICompatClient

    try:
        return OpenAICompatClient(
            spec, base_url=base_url, api=api, budget=budget, meter=meter, timeout=timeout
        )
    except ValueError as exc:
        raise LLMConfigError(str(exc)) from exc
