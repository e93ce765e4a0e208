"""``pyagent serve``: serve a local model as an OpenAI Responses API (and Chat Completions) endpoint."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pyagent.cli import CommandError

API_KEY_ENV = "PYAGENT_API_KEY"


def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "pyagent" / "responses.db"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a local model as an OpenAI Responses API",
        description=(
            "Serve a local Llama-family model (a GGUF file, or safetensors + tokenizer.json) over HTTP as the OpenAI Responses "
            "API (/v1/responses, SSE streaming, stored responses) and Chat Completions (/v1/chat/completions). "
            "Binds 127.0.0.1 unless told otherwise."
        ),
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a GGUF file, or a model directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--quantize", choices=["q8_0"], default=None,
                   help="convert a safetensors checkpoint's matrices to Q8_0 at load")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    p.add_argument("--store", metavar="DB", default=None,
                   help=f"SQLite file for stored responses (default: {default_store()}; ':memory:' keeps none)")
    p.add_argument("--api-key-file", metavar="FILE", default=None,
                   help=f"require 'Authorization: Bearer K' for one of the keys in FILE (one per line, # comments);"
                        f" also read from ${API_KEY_ENV} (comma-separated). Without either: no auth")
    p.add_argument("--api-key", metavar="K", default=None,
                   help="one more key on the command line (visible to other users in `ps`; prefer --api-key-file)")
    p.add_argument("--served-model-name", metavar="NAME", action="append", default=[],
                   help="extra model name clients may use (repeatable); the directory's name is always served")
    p.add_argument("--max-responses", type=int, default=10_000, help="keep at most this many stored responses")
    p.add_argument("--max-age-days", type=float, default=30.0, help="drop stored responses older than this")
    return p


def read_api_keys(key_file: str | None, key: str | None) -> tuple[str, ...]:
    """Every key the server accepts: lines of ``key_file``, ``$PYAGENT_API_KEY`` (comma-separated), ``key``."""
    keys: list[str] = []
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--api-key-file {key_file}: cannot read it: {exc}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise CommandError(f"--api-key-file {key_file}: holds no key (one per line)")
    keys += [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    if key:
        print("pyagent serve: warning: --api-key is visible to every user in `ps`; use --api-key-file",
              file=sys.stderr, flush=True)
        keys.append(key)
    if any(any(c.isspace() for c in k) for k in keys):
        raise CommandError("an API key must not contain whitespace")
    return tuple(dict.fromkeys(keys))


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    if not model_dir.is_dir() and not model_dir.is_file():
        raise CommandError(f"--model {args.model}: not a model directory or GGUF file (create a tiny one with "
                           "`pyagent model init-tiny DIR`)")
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port {args.port}: must be between 0 and 65535")
    if args.max_responses < 1 or args.max_age_days <= 0:
        raise CommandError("--max-responses must be >= 1 and --max-age-days > 0")
    api_keys = read_api_keys(args.api_key_file, args.api_key)

    from pyagent.server import Backend, LocalServer, ResponseStore, create_app
    from pyagent.server.local import load_engine

    try:
        engine = load_engine(model_dir, quantize=args.quantize)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot load the model in {model_dir}: {exc}") from None
    store_path = args.store or str(default_store())
    try:
        store = ResponseStore(store_path, max_responses=args.max_responses,
                              max_age_seconds=args.max_age_days * 86400.0)
    except Exception as exc:
        raise CommandError(f"cannot open the response store {store_path}: {exc}") from None
    app = create_app(Backend(engine), store, api_keys=api_keys, served_names=tuple(args.served_model_name))
    try:
        server = LocalServer(app, host=args.host, port=args.port, log_level="info")
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    auth = f"bearer token required, {len(api_keys)} key(s)" if api_keys else "no authentication"
    print(f"pyagent serve: model {engine.model_name!r} at {server.base_url} ({auth}; store {store_path})", flush=True)
    if not api_keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        print("pyagent serve: warning: listening beyond loopback without an API key (--api-key-file)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; for a server it is the normal stop
        pass
    finally:
        store.close()
    print("pyagent serve: stopped", flush=True)
    return 0
