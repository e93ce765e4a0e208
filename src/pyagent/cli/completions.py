"""Several completions of one prompt and their log-probabilities, for ``generate`` and ``chat``.

``-n N`` runs N requests side by side in the engine (one batch); with ``--seed S`` completion ``i`` gets
seed ``S + i`` so they differ yet repeat, as the server's ``n`` does. ``--logprobs`` reports each generated
token's log-probability under the model and ``--top-logprobs K`` its K most likely alternatives, in the
OpenAI chat shape (``token``, ``bytes``, ``logprob``, ``top_logprobs``) for ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

MAX_CHOICES = 16  # the server's bound on n


def add_choice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=1, metavar="N", help=f"completions to generate (1..{MAX_CHOICES}; "
                                                                 "with --seed S, completion i uses seed S+i)")
    p.add_argument("--logprobs", action="store_true", help="print each generated token's log-probability")
    p.add_argument("--top-logprobs", type=int, default=None, metavar="K",
                   help="with each token, its K most likely alternatives (0..20; implies --logprobs)")


def choice_params(args: argparse.Namespace, params: Any) -> Any:
    """``params`` with the log-probabilities asked for; a bad ``-n`` or ``--top-logprobs`` is a ValueError."""
    if not 1 <= args.n <= MAX_CHOICES:
        raise ValueError(f"-n must be in 1..{MAX_CHOICES}, got {args.n}")
    if args.top_logprobs is not None and not 0 <= args.top_logprobs <= 20:
        raise ValueError(f"--top-logprobs must be in 0..20, got {args.top_logprobs}")
    if args.logprobs or args.top_logprobs is not None:
        return dataclasses.replace(params, logprobs=args.top_logprobs or 0)
    return params


@dataclass
class Choice:
    """One finished completion: its text, tokens and (when asked) log-probability entries."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)


def run_choices(engine: Any, prompt_ids: list[int], params: Any, n: int, *, tag: str, stream: bool) -> list[Choice]:
    """Generate ``n`` completions of ``prompt_ids``; with ``stream`` (only for n == 1) write text as it comes."""
    # imported here: the server package imports FastAPI, which every CLI start would otherwise pay
    from pyagent.server.logprobs import format_logprobs

    choices = [Choice(i) for i in range(n)]
    for i in range(n):
        seed = None if params.seed is None else params.seed + i
        engine.add_request(f"{tag}-{i}", prompt_ids, dataclasses.replace(params, seed=seed))
    top_n = params.logprobs
    while engine.has_unfinished():
        for out in engine.step():
            c = choices[int(out.request_id.rsplit("-", 1)[1])]
            c.text, c.token_ids, c.finish_reason = out.text, out.token_ids, out.finish_reason
            if top_n is not None:
                c.logprobs.extend(format_logprobs(engine.tokenizer.token_bytes, out.logprobs, top_n))
            if stream and out.text_delta:
                sys.stdout.write(out.text_delta)
                sys.stdout.flush()
    return choices


def write_choice(choice: Choice, n: int, *, streamed: bool) -> None:
    """The text form: a header per completion when there are several, the text, then a logprob table."""
    if n > 1:
        sys.stdout.write(f"--- completion {choice.index + 1} of {n} ---\n")
    sys.stdout.write(("" if streamed else choice.text) + "\n")
    if choice.logprobs:
        sys.stdout.write(logprob_table(choice.logprobs))
    sys.stdout.flush()


def logprob_table(entries: list[dict[str, Any]]) -> str:
    """One line per generated token: its text (repr, so spaces and newlines show), logprob, alternatives."""
    width = max(len(repr(e["token"])) for e in entries)
    lines = []
    for e in entries:
        alts = "  ".join(f"{t['token']!r} {t['logprob']:.4f}" for t in e["top_logprobs"])
        lines.append(f"  {e['token']!r:<{width}}  {e['logprob']:9.4f}" + (f"   top: {alts}" if alts else ""))
    return "logprobs:\n" + "\n".join(lines) + "\n"
