"""``pyagent model``: manage local model checkpoints (``init-tiny`` writes a tiny random one)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "model", help="local model checkpoints (init-tiny: a tiny random Llama for offline tries)",
        description="Manage local model checkpoints.")
    sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    tiny = sub.add_parser("init-tiny", help="write a tiny random Llama checkpoint with a BPE tokenizer",
                          description="Write a tiny random Llama checkpoint (config.json, model.safetensors, "
                                      "tokenizer.json) in the Hugging Face layout to DIR.")
    tiny.add_argument("directory", metavar="DIR", help="folder to write (created; must be empty if it exists)")
    tiny.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random weights (0)")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pyagent.cli import CommandError

    target = Path(args.directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CommandError(f"{target} exists and is not an empty directory; choose a new folder")
    from pyagent.inference.tiny import init_tiny

    try:
        init_tiny(target, seed=args.seed)
    except OSError as exc:
        raise CommandError(f"cannot write the checkpoint to {target}: {exc}") from None
    print(f"wrote a tiny random Llama checkpoint to {target}")
    return 0
