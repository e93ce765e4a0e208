"""``pyagent memory stats|query|snapshot|restore|prune|export``: inspect and manage the knowledge store."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.memory.store import KnowledgeStore

_STORE_HELP = (
    "the store: a .db file, or a workspace directory meaning DIR/.pyagent/memory.db "
    "(default: ./.pyagent/memory.db)"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "memory",
        help="inspect, snapshot, restore and prune the knowledge store",
        description="The swarm's knowledge store (facts, relations, semantic texts) with synaptic decay "
        "and blake3-verified snapshots. `pyagent improve PATH` keeps one in PATH/.pyagent/memory.db.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=".", metavar="PATH", help=_STORE_HELP)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="memory_command", metavar="ACTION", required=True)

    sub.add_parser("stats", parents=[common], help="counts, cycle, settings and snapshots of the store")

    q = sub.add_parser("query", parents=[common], help="facts by namespace/prefix, similar texts, relations",
                       description="Facts of NAMESPACE whose key starts with PREFIX; or --similar TEXT (semantic "
                       "top-k), --neighbours NODE, --path SOURCE TARGET (relations).")
    q.add_argument("namespace", nargs="?", help="the facts' namespace (e.g. pyagent.failures)")
    q.add_argument("prefix", nargs="?", default="", help="key prefix (default: all keys)")
    q.add_argument("--similar", metavar="TEXT", help="the stored texts most similar to TEXT")
    q.add_argument("--neighbours", metavar="NODE", help="edges touching NODE")
    q.add_argument("--direction", choices=("out", "in", "both"), default="both", help="for --neighbours")
    q.add_argument("--predicate", help="only edges with this predicate (--neighbours, --path)")
    q.add_argument("--path", nargs=2, metavar=("SOURCE", "TARGET"), help="a shortest path of edges")
    q.add_argument("-k", "--limit", type=int, default=20, help="at most this many results (default 20)")

    s = sub.add_parser("snapshot", parents=[common], help="write a verified shard snapshot into DIR",
                       description="Writes the store as blake3-hashed msgpack shards plus a manifest into DIR; "
                       "shards unchanged since the last snapshot in DIR are reused. --verify checks DIR instead.")
    s.add_argument("directory", help="the snapshot directory")
    s.add_argument("--verify", action="store_true", help="only verify the snapshot in DIR (every shard hash)")

    r = sub.add_parser("restore", parents=[common], help="build a new store from a snapshot",
                       description="Verifies every shard of SNAPSHOT, then builds a new store at --to (default: "
                       "--store). Refuses to write over an existing store. SNAPSHOT may also be a directory of "
                       "periodic snapshots (snap-*): the newest complete one is used.")
    r.add_argument("snapshot", help="the snapshot directory")
    r.add_argument("--to", metavar="PATH", help="where to create the restored store (must not exist)")

    pr = sub.add_parser("prune", parents=[common], help="drop facts and edges whose weight decayed below threshold")
    pr.add_argument("--threshold", type=float, help="prune below this weight (default: the store's setting)")
    pr.add_argument("--half-life", type=int, help="idle cycles per halving (default: the store's setting)")
    pr.add_argument("--decay", type=float, help="factor per half-life (default: the store's setting)")
    pr.add_argument("--save", action="store_true", help="keep the given settings for future cycles")
    pr.add_argument("--dry-run", action="store_true", help="only count what would be pruned")

    st = sub.add_parser("status", help="replication state of every node of the fleet (--fleet)",
                        description="Asks every trusted node running `pyagent node --memory` (found by mDNS) for "
                        "its items, lag and replication factor.")
    st.add_argument("--fleet", action="store_true", required=True, help="ask the whole fleet (required)")
    st.add_argument("--home", help="node home with keys and trusted list (default $PYAGENT_NODE_HOME or "
                    "~/.pyagent/node)")
    st.add_argument("--interface", default="127.0.0.1", help="IPv4 address for mDNS and the transport")
    st.add_argument("--wait", type=float, default=2.0, metavar="S", help="seconds to wait for nodes (default 2)")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("export", parents=[common], help="every fact, edge and text as JSON lines")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    return p


def _store_path(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir():
        return path / ".pyagent" / "memory.db"
    return path


def _open(args: argparse.Namespace, *, write: bool = False) -> KnowledgeStore:
    from pyagent.cli import CommandError
    from pyagent.memory.errors import StoreError
    from pyagent.memory.store import KnowledgeStore

    path = _store_path(args.store)
    if not path.is_file():
        raise CommandError(
            f"no knowledge store at {path}: `pyagent improve PATH` creates PATH/.pyagent/memory.db; "
            "pass --store FILE or --store WORKSPACE"
        )
    try:
        return KnowledgeStore(path, readonly=not write)
    except StoreError as exc:
        raise CommandError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.memory.errors import StoreError

    action = {"stats": _stats, "query": _query, "snapshot": _snapshot, "restore": _restore,
              "prune": _prune, "export": _export, "status": _status}[args.memory_command]
    try:
        return action(args)
    except (StoreError, ValueError, OSError) as exc:
        raise CommandError(str(exc)) from exc


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        from pyagent.memory.report import dumps

        sys.stdout.write(dumps(data).decode() + "\n")
    else:
        print(text)


def _stats(args: argparse.Namespace) -> int:
    from pyagent.memory.report import stats

    with _open(args) as store:
        data = stats(store, store.path.parent / "memory-snapshots")
    lines = [
        f"store      {data['store']} ({data['bytes'] / 1e6:.1f} MB)",
        f"cycle      {data['cycle']}",
        "records    " + ", ".join(f"{n} {t}" for t, n in data["counts"].items()),
        f"embedder   {data['embedder'] or '(no texts yet)'}",
        "pruning    " + ", ".join(f"{k}={v}" for k, v in data["pruning"].items()),
        f"prunable   {data['prunable_now']} facts below threshold now",
        "namespaces " + (", ".join(f"{ns} ({n})" for ns, n in data["namespaces"].items()) or "(none)"),
        "snapshots  " + (", ".join(data["snapshots"]) or "(none)"),
    ]
    _emit(args, data, "\n".join(lines))
    return 0


def _query(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.memory.pruning import NeuralPruningEngine
    from pyagent.memory.report import edge_record, fact_record

    modes = [args.namespace is not None, args.similar is not None, args.neighbours is not None, args.path is not None]
    if sum(modes) != 1:
        raise CommandError("give exactly one of: NAMESPACE [PREFIX], --similar TEXT, --neighbours NODE, --path A B")
    if args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}")
    with _open(args) as store:
        engine = NeuralPruningEngine(store, persist=False)
        now = store.cycle
        if args.similar is not None:
            hits = store.search(args.similar, k=args.limit, namespace=args.namespace)
            data: list[dict[str, Any]] = [
                {"namespace": h.namespace, "key": h.key, "score": round(h.score, 4), "text": h.text} for h in hits]
            text = "\n".join(f"{h['score']:.3f}  {h['namespace']}  {h['key']!r}  {h['text']}" for h in data)
        elif args.neighbours is not None:
            edges = store.neighbours(args.neighbours, predicate=args.predicate, direction=args.direction,
                                     limit=args.limit)
            data = [edge_record(e, engine, now) for e in edges]
            text = "\n".join(f"{e['subject']} -{e['predicate']}-> {e['object']}  (weight {e['weight']:.3g})"
                             for e in data)
        elif args.path is not None:
            found = store.shortest_path(args.path[0], args.path[1], predicate=args.predicate)
            data = [edge_record(e, engine, now) for e in found or []]
            text = ("no path within 6 edges" if found is None else
                    " ".join([args.path[0], *(f"-{e.predicate}-> {e.object}" for e in found)]))
        else:
            facts = store.query(args.namespace, args.prefix, limit=args.limit)
            data = [fact_record(f, engine, now) for f in facts]
            text = "\n".join(f"{f['key']!r}  weight {f['weight']:.3g}  {_short(f['value'])}" for f in data)
    _emit(args, data, text or "(nothing found)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.memory.report import fleet_summary
    from pyagent.voyager.home import HomeError, NodeHome
    from pyagent.voyager.memory_client import FleetClient

    if not args.wait >= 0:
        raise CommandError("--wait must be >= 0")
    try:
        home = NodeHome(args.home or os.environ.get("PYAGENT_NODE_HOME") or None)
        client = FleetClient(home, interface=args.interface, discovery_wait=args.wait).start()
    except HomeError as exc:
        raise CommandError(str(exc)) from None
    try:
        nodes, missing = client.statuses()
    finally:
        client.close()
    if not nodes and not missing:
        raise CommandError(f"no trusted node with memory answered on {args.interface} within {args.wait}s "
                           "(start them with `pyagent node --memory STORE`; trust their keys with `pyagent trust`)")
    data = fleet_summary(nodes, missing)
    lines = [f"{'node':<16} {'items':>8} {'shards':>6} {'owned':>5} {'lag':>4} {'last sync':>9} {'cycle':>7}"]
    for n in data["nodes"]:
        age = "-" if n["last_sync_s"] is None else f"{n['last_sync_s']:.1f}s"
        lines.append(f"{n['name']:<16} {n['items']:>8} {n['shards']:>6} {n['owned']:>5} {n['lag']:>4} {age:>9} "
                     f"{n['cycle']:>7}")
    lines.append(f"replication factor: min {data['min_replication']} (target {data['target']}), "
                 f"{data['under_replicated']} of {data['shards']} shard(s) under target; lag = shards behind peers")
    if missing:
        lines.append("not answering: " + ", ".join(missing))
    _emit(args, data, "\n".join(lines))
    return 0


def _short(value: Any, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _snapshot(args: argparse.Namespace) -> int:
    if args.verify:
        from pyagent.memory.snapshot import verify_snapshot

        manifest, shards = verify_snapshot(args.directory)
        size = sum(len(b) for b in shards.values())
        data = {"directory": args.directory, "ok": True, "counts": manifest["counts"], "shards": len(shards),
                "bytes": size, "cycle": manifest["cycle"]}
        _emit(args, data, f"{args.directory}: OK, {len(shards)} shards verified ({size / 1e6:.1f} MB), "
              + ", ".join(f"{n} {t}" for t, n in manifest["counts"].items()))
        return 0
    with _open(args) as store:
        info = store.snapshot(args.directory)
    data = {"directory": str(info.directory), "cycle": info.cycle, "counts": info.counts, "shards": info.shards,
            "written": info.shards_written, "reused": info.shards_reused, "bytes": info.bytes,
            "seconds": round(info.seconds, 3)}
    _emit(args, data, f"snapshot {info.directory}: " + ", ".join(f"{n} {t}" for t, n in info.counts.items())
          + f" in {info.shards} shards ({info.shards_written} written, {info.shards_reused} reused), "
          f"{info.bytes / 1e6:.1f} MB, {info.seconds:.2f} s")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.memory.snapshot import MANIFEST, latest_snapshot, restore_snapshot

    source = Path(args.snapshot)
    if not (source / MANIFEST).exists():
        newest = latest_snapshot(source)
        if newest is None:
            raise CommandError(f"{source} holds no snapshot (no {MANIFEST}, no complete snap-* directory)")
        source = newest
    target = Path(args.to) if args.to else _store_path(args.store)
    if target.exists():
        raise CommandError(f"refusing to restore over {target}: it exists; choose a new path with --to")
    counts = restore_snapshot(source, target)
    _emit(args, {"snapshot": str(source), "store": str(target), "counts": counts},
          f"restored {source} into {target}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    return 0


def _prune(args: argparse.Namespace) -> int:
    from pyagent.memory.pruning import NeuralPruningEngine

    overrides = {k: v for k, v in (("threshold", args.threshold), ("half_life", args.half_life),
                                    ("decay", args.decay)) if v is not None}
    with _open(args, write=True) as store:
        engine = NeuralPruningEngine(store, persist=args.save, **overrides)
        report = engine.prune(dry_run=args.dry_run)
    verb = "would prune" if args.dry_run else "pruned"
    _emit(args, {"cycle": report.cycle, "facts": report.facts, "edges": report.edges, "dry_run": args.dry_run},
          f"{verb} {report.facts} facts and {report.edges} edges below weight {engine.params.threshold} "
          f"at cycle {report.cycle}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pyagent.memory.report import export_lines
    from pyagent.state.fsutil import atomic_writer

    with _open(args) as store:
        if args.output:
            with atomic_writer(args.output, durable=False) as out:
                for line in export_lines(store):
                    out.write(line)
        else:
            try:
                for line in export_lines(store):
                    sys.stdout.buffer.write(line)
                sys.stdout.flush()
            except BrokenPipeError:  # the reader (e.g. `| head`) has seen enough
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
    return 0
