"""``pyagent improve --llm local:DIR`` (or ``local:FILE.gguf``): the agents use PyAgent's own model through PyAgent's own server.

``local:DIR`` serves the checkpoint in DIR (or the GGUF file) in-process (uvicorn on 127.0.0.1, a free port, a thread; one
server per directory); ``local:http://HOST:PORT/v1`` points at a running ``pyagent serve`` (its bearer
key, if any, from ``$PYAGENT_API_KEY``). Either way the agents talk to it as to any OpenAI-compatible
endpoint, so metering, budgets, retries and redaction work exactly as with a hosted model.
The CLI passes :func:`local_llm` to ``make_llm`` (via ``ImproveOptions.local_llm``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from pyagent.agents.llm.base import LLMClient, UsageMeter
from pyagent.agents.llm.factory import LLMConfigError
from pyagent.agents.llm.openai_compat import OpenAICompatClient

if TYPE_CHECKING:
    from pyagent.model.budget import Budget

API_KEY_ENV = "PYAGENT_API_KEY"


def _served_model(base_url: str, api_key: str) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(f"{base_url}/models", headers=headers, timeout=10.0)
        reply.raise_for_status()
        return str(reply.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise LLMConfigError(f"--llm local:{base_url}: cannot list the served model ({exc}); is `pyagent serve` "
                             f"running there (and ${API_KEY_ENV} set if it needs a key)?") from None


def local_llm(target: str, budget: Budget | None, meter: UsageMeter) -> LLMClient:
    """The client for ``--llm local:TARGET`` (TARGET is a model directory or a server URL)."""
    if target.startswith(("http://", "https://")):
        base_url = target.rstrip("/")
        api_key = os.environ.get(API_KEY_ENV, "")
        model = _served_model(base_url, api_key)
    else:
        from pyagent.server.local import start_local_server

        path = Path(target)
        if not path.is_dir() and not path.is_file():
            raise LLMConfigError(f"--llm local:{target}: not a model directory or GGUF file (make a tiny one "
                                 "with `pyagent model init-tiny DIR`, or give local:http://HOST:PORT/v1)")
        try:
            base_url = start_local_server(path)
        except (OSError, ValueError) as exc:
            raise LLMConfigError(f"--llm local:{target}: cannot load the model: {exc}") from None
        api_key, model = "", path.resolve().stem if path.is_file() else path.resolve().name
    # api_key="" sends no Authorization header: never hand $OPENAI_API_KEY to a local server. Greedy
    # decoding (temperature 0): edits repeat from run to run, and a small model sampled at the API's
    # default of 1.0 writes noise ("Commercial, delivered to{") where greedy gives plain sentences.
    return OpenAICompatClient(model, base_url=base_url, api_key=api_key, api="responses", budget=budget,
                              meter=meter, temperature=0.0)

