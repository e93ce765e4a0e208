"""Several completions of one prompt and their log-probabilities, for ``generate`` and ``chat``.

``-n N`` runs N requests side by side in the engine (one batch); with ``--seed S`` completion ``i`` gets
seed ``S + i`` so they differ yet repeat, as the server's ``n`` does. ``--logprobs`` reports each generated
token's log-probability under the model and ``--top-logprobs K`` its K most likely alternatives, in the
OpenAI chat shape (``token``, ``bytes``, ``logprob``, ``top_logprobs``) for ``--json``. ``--stats`` prints
how long the prompt and the generation took, as llama.cpp's tools do, so a speed is never a guess.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Any

MAX_CHOICES = 16  # the server's bound on n


def add_choice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=1, metavar="N", help=f"completions to generate (1..{MAX_CHOICES}; "
                                                                 "with --seed S, completion i uses seed S+i)")
    p.add_argument("--logprobs", action="store_true", help="print each generated token's log-probability")
    p.add_argument("--top-logprobs", type=int, default=None, metavar="K",
                   help="with each token, its K most likely alternatives (0..20; implies --logprobs)")
    p.add_argument("--stats", action="store_true",
                   help="print to stderr the model's load time, the prompt's tokens/s (until the first token) and "
                        "the generation's tokens/s (the tokens after it)")


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


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of one ``run_choices``: the prompt until every completion's first token, then the
    tokens after it (all completions together)."""

    prompt_tokens: int
    prompt_seconds: float
    generated: int
    decode_seconds: float

    def report(self, load_seconds: float | None = None) -> str:
        def rate(tokens: int, seconds: float) -> str:
            return f"{tokens / seconds:.1f} tok/s" if seconds > 0 else "-"

        def count(tokens: int) -> str:
            return f"{tokens} token" + ("" if tokens == 1 else "s")

        loaded = "" if load_seconds is None else f"model loaded in {load_seconds:.2f} s; "
        return (f"{loaded}prompt: {count(self.prompt_tokens)} in {self.prompt_seconds:.3f} s "
                f"({rate(self.prompt_tokens, self.prompt_seconds)}); generation: {count(self.generated)} in "
                f"{self.decode_seconds:.3f} s ({rate(self.generated, self.decode_seconds)})")


@dataclass(frozen=True)
class Completions:
    choices: list[Choice]
    timing: Timing


def run_choices(engine: Any, prompt_ids: list[int], params: Any, n: int, *, tag: str, stream: bool) -> Completions:
    """Generate ``n`` completions of ``prompt_ids``; with ``stream`` (only for n == 1) write text as it comes."""
    # imported here: the server package imports FastAPI, which every CLI start would otherwise pay
    from pyagent.server.logprobs import format_logprobs

    choices = [Choice(i) for i in range(n)]
    start = time.perf_counter()
    first: float | None = None
    for i in range(n):
        seed = None if params.seed is None else params.seed + i
        engine.add_request(f"{tag}-{i}", prompt_ids, dataclasses.replace(params, seed=seed))
    top_n = params.logprobs
    while engine.has_unfinished():
        outs = engine.step()
        if first is None and len({o.request_id for o in outs}) == n:  # every completion has its first token
            first = time.perf_counter()
        for out in outs:
            c = choices[int(out.request_id.rsplit("-", 1)[1])]
            c.text, c.token_ids, c.finish_reason = out.text, out.token_ids, out.finish_reason
            if top_n is not None:
                c.logprobs.extend(format_logprobs(engine.tokenizer.token_bytes, out.logprobs, top_n))
            if stream and out.text_delta:
                sys.stdout.write(out.text_delta)
                sys.stdout.flush()
    end = time.perf_counter()
    first = end if first is None else first
    generated = sum(max(len(c.token_ids) - 1, 0) for c in choices)
    return Completions(choices, Timing(len(prompt_ids), first - start, generated, end - first))


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
