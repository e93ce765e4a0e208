"""``pyagent serve``: serve a local model as an OpenAI Responses API (and Chat Completions) endpoint."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from pyagent.cli import CommandError
from pyagent.cli.generate import add_engine_args, engine_options

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
    p.add_argument("--model", metavar="PATH",
                   help="a GGUF file, or a model directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--quantize", choices=["q8_0"], default=None,
                   help="convert a safetensors checkpoint's matrices to Q8_0 at load")
    add_engine_args(p)
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
    d = p.add_argument_group("disaggregated prefill/decode")
    d.add_argument("--role", choices=("single", "prefill", "decode", "router"), default="single",
                   help="single (default): one instance does everything; prefill: compute prompts and lease their "
                        "KV blocks on a side channel; decode: load them from --kv-peer and generate; router: one "
                        "endpoint in front of --prefill and --decode")
    d.add_argument("--kv-port", type=int, default=0, help="prefill: side-channel port (default: any free port)")
    d.add_argument("--kv-peer", metavar="tcp://HOST:PORT", help="decode: the prefill instance's side channel")
    d.add_argument("--kv-peer-key", metavar="KEY",
                   help="decode: the prefill node's public key (default: this home's own key, i.e. same home)")
    d.add_argument("--kv-lease-timeout", type=float, default=30.0,
                   help="seconds a leased block waits for its peer before it is freed (default 30)")
    d.add_argument("--kv-backend", choices=("zmq", "nixl"), default="zmq",
                   help="how blocks move: zmq (default, over the authenticated side channel) or nixl (direct "
                        "memory reads through UCX; needs `pip install 'pyagent[nixl]'`), the same on both sides")
    d.add_argument("--home", help="node home with the CurveZMQ keys (default ~/.pyagent/node); a prefill "
                                  "instance accepts its own key and the keys `pyagent trust` added")
    d.add_argument("--block-size", type=int, default=16, help="KV cache block size in tokens (default 16)")
    d.add_argument("--prefill", metavar="URL", help="router: the prefill instance's base URL")
    d.add_argument("--decode", metavar="URL", help="router: the decode instance's base URL")
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


def _run_router(args: argparse.Namespace) -> int:
    if not args.prefill or not args.decode:
        raise CommandError("--role router needs --prefill URL and --decode URL")
    from pyagent.server import LocalServer
    from pyagent.server.router import create_router_app

    app = create_router_app(args.prefill, args.decode)
    try:
        server = LocalServer(app, host=args.host, port=args.port, log_level="info")
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    print(f"pyagent serve: router at {server.base_url} (prefill {args.prefill}, decode {args.decode})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    print("pyagent serve: stopped", flush=True)
    return 0


def _connector(args: argparse.Namespace) -> Any:
    """The KV connector for --role prefill|decode (None for a single instance)."""
    if args.role == "single":
        return None
    if args.role == "decode" and not args.kv_peer:
        raise CommandError("--role decode needs --kv-peer tcp://HOST:PORT (the prefill instance's side channel)")
    if args.kv_lease_timeout <= 0:
        raise CommandError("--kv-lease-timeout must be positive")
    from pyagent.kv_transfer.connector import DisaggConnector, PeerAddress
    from pyagent.voyager.home import HomeError, NodeHome, validate_key

    home = NodeHome(args.home)
    try:
        keypair = home.keypair()
        peer = None
        if args.kv_peer:
            key = validate_key(args.kv_peer_key) if args.kv_peer_key else keypair.public
            peer = PeerAddress.parse(args.kv_peer, key)
    except (HomeError, ValueError, OSError) as exc:
        raise CommandError(str(exc)) from None
    if args.kv_backend == "nixl":
        from pyagent.kv_transfer.nixl_backend import INSTALL_HINT, nixl_available

        if not nixl_available():
            raise CommandError(f"--kv-backend nixl: {INSTALL_HINT}")
    return DisaggConnector(args.role, keypair=keypair, trusted=home.trusted_keys,
                           host=args.host, port=args.kv_port, peer=peer, lease_timeout=args.kv_lease_timeout,
                           backend=args.kv_backend)


def run(args: argparse.Namespace) -> int:
    if args.role == "router":
        return _run_router(args)
    if args.model is None:
        raise CommandError("--model PATH is required (except with --role router)")
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

    if args.block_size < 1:
        raise CommandError("--block-size must be positive")
    connector = _connector(args)
    try:
        engine = load_engine(model_dir, block_size=args.block_size, kv_connector=connector,
                             quantize=args.quantize, **engine_options(args))
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot load the model in {model_dir}: {exc}") from None
    if connector is not None:
        from pyagent.kv_transfer.connector import HandshakeRefused
        from pyagent.kv_transfer.nixl_backend import NixlUnavailable

        try:
            connector.start(engine.model_name, engine.config)
        except (HandshakeRefused, NixlUnavailable, OSError, TimeoutError) as exc:
            connector.close()
            raise CommandError(f"--role {args.role}: {exc}") from None
        where = f"side channel {connector.endpoint}" if args.role == "prefill" else f"prefill peer {args.kv_peer}"
        print(f"pyagent serve: {args.role} instance, {where}, lease timeout {args.kv_lease_timeout:g} s", flush=True)
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
    print(f"pyagent serve: {engine.kv_cache_summary()}", flush=True)
    if not api_keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        print("pyagent serve: warning: listening beyond loopback without an API key (--api-key-file)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; for a server it is the normal stop
        pass
    finally:
        store.close()
        if connector is not None:
            connector.close()
    print("pyagent serve: stopped", flush=True)
    return 0
