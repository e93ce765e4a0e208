"""``pyagent chat``: talk to a local model with its own chat template, one-shot or interactively."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pyagent.cli.completions import add_choice_args, choice_params, run_choices, write_choice
from pyagent.cli.generate import (
    add_engine_args,
    add_quantize_arg,
    add_sampling_args,
    engine_options,
    sampling_params,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "chat", help="chat with a local model (a GGUF file or a Hugging Face folder)",
        description="Send MESSAGE to a local model formatted by the model's own chat template and print the "
                    "reply; without MESSAGE, hold an interactive conversation (an empty line or Ctrl-D ends it).")
    p.add_argument("message", metavar="MESSAGE", nargs="?", help="one user message (omit for interactive mode)")
    p.add_argument("--model", required=True, metavar="PATH", help="a GGUF file, or a checkpoint folder")
    p.add_argument("--system", metavar="TEXT", default=None, help="a system message (else the template's default)")
    add_quantize_arg(p)
    add_engine_args(p)
    add_sampling_args(p)
    add_choice_args(p)
    p.set_defaults(temperature=0.7)
    return p


def _reply(engine: Any, messages: list[dict[str, str]], params: Any, turn: int, n: int,
           stats: float | None) -> str:
    """Print the reply (or ``n`` of them, in one-shot mode); the first continues the conversation.
    ``stats``: the model's load time when ``--stats`` asks for timings (reported with the first reply)."""
    prompt_ids = engine.tokenizer.encode_chat(messages)
    done = run_choices(engine, prompt_ids, params, n, tag=f"chat{turn}", stream=n == 1)
    for c in done.choices:
        write_choice(c, n, streamed=n == 1)
    if stats is not None:
        print(f"pyagent chat: {done.timing.report(stats if turn == 0 else None)}", file=sys.stderr)
    return done.choices[0].text


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.inference.engine import PagedAttentionEngine
    from pyagent.inference.errors import ModelLoadError

    try:
        params = choice_params(args, sampling_params(args))
        if args.n > 1 and args.message is None:
            raise ValueError("-n above 1 needs a MESSAGE (one-shot mode): a conversation continues one reply")
        params.validate()
        loading = time.perf_counter()
        engine = PagedAttentionEngine.from_pretrained(args.model, max_num_seqs=args.n, quantize=args.quantize,
                                                      **engine_options(args))
        loaded = time.perf_counter() - loading
    except (ModelLoadError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    messages: list[dict[str, str]] = [] if args.system is None else [{"role": "system", "content": args.system}]
    turn = 0
    while True:
        if args.message is not None:
            text = args.message
        else:
            try:
                text = input("> " if sys.stdin.isatty() else "")
            except EOFError:
                return 0
            if not text.strip():
                return 0
        messages.append({"role": "user", "content": text})
        try:
            reply = _reply(engine, messages, params, turn, args.n, loaded if args.stats else None)
        except ValueError as exc:  # a template that refuses the conversation, a prompt beyond the context
            raise CommandError(str(exc)) from None
        messages.append({"role": "assistant", "content": reply})
        turn += 1
        if args.message is not None:
            return 0
