"""Types the project's own test run observes (MonkeyType-style), recorded during the baseline run.

``python -m pyagent.agents.typetrace OUT ROOT -m MODULE ARGS...`` runs ``python -m MODULE ARGS...``
(the test command, usually already wrapped by coverage) under a ``sys.setprofile`` hook that records,
for every call of a function defined in a file under ROOT, the types of its arguments and of the
value it returned. A ``return`` event caused by an exception unwinding the frame is not a return
(the frame's last instruction is then no return opcode), so a function that raised is not typed
``None``. Only type names a reviewer can read without imports are kept: builtins, containers of
them, and classes defined in the function's own module. The result is JSON, read by :func:`read_trace`.

Recording stops after ``TRACE_SECONDS`` (the hook slows a call-heavy suite several times over), so
functions only the later tests call are not typed from the trace. A profile hook rather than the
monkeytype package: it rides along the coverage-wrapped baseline
without a second run or a database, and keeps only what our annotator can write safely.
"""

from __future__ import annotations

import dis
import json
import os
import runpy
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["TRACE_MODULE", "TracedFunction", "read_trace", "traced_argv"]

TRACE_MODULE = "pyagent.agents.typetrace"
_RETURN_OPS = frozenset(
    dis.opmap[name]
    for name in ("RETURN_VALUE", "RETURN_CONST", "INSTRUMENTED_RETURN_VALUE", "INSTRUMENTED_RETURN_CONST")
    if name in dis.opmap
)
_SCALARS = frozenset({"int", "float", "str", "bytes", "bool", "complex", "None"})
_CONTAINERS: dict[type, str] = {list: "list", set: "set", frozenset: "frozenset", dict: "dict", tuple: "tuple"}
_GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200  # generator, coroutine, iterable coroutine, async generator
_MAX_TYPES = 3  # more distinct types than this: the parameter is polymorphic, leave it alone
_SAMPLE = 5  # container elements inspected per call
_SAMPLES = 200  # calls of one function recorded; later ones cost one dict lookup
_UNSEEN: dict[str, Any] = {}
# A profile hook costs every call of every function, C ones included: on a call-heavy suite it makes
# the run several times slower. Types are recorded for this long after the first call of a project
# function (the runner's and its plugins' start-up do not count), then the hook is removed.
TRACE_SECONDS = 20.0


def _type_name(value: Any, module: str, depth: int = 0) -> str | None:
    """A readable annotation for ``value``'s type, or None when it would need an import."""
    if value is None:
        return "None"
    t = type(value)
    if t.__module__ == "builtins" and t.__name__ in _SCALARS:
        return t.__name__
    container = _CONTAINERS.get(t)
    if container is not None:
        if depth >= 1:
            return None
        if t is dict:
            items = list(value.items())[:_SAMPLE]
            keys = _union([_type_name(k, module, 1) for k, _ in items])
            values = _union([_type_name(v, module, 1) for _, v in items])
            return f"dict[{keys}, {values}]" if keys and values else None
        elements = list(value)[:_SAMPLE] if t is not tuple else list(value)
        inner = _union([_type_name(e, module, 1) for e in elements])
        if inner is None:
            return None
        return f"tuple[{inner}, ...]" if t is tuple else f"{container}[{inner}]"
    if t.__module__ == module and "<" not in t.__qualname__:
        return t.__qualname__
    return None


def _union(names: list[str | None]) -> str | None:
    """One annotation covering all of ``names`` (None if any is unknown, or none were seen)."""
    if not names or any(n is None for n in names):
        return None
    return combine([n for n in names if n is not None])


def combine(names: list[str]) -> str | None:
    """``int | None`` from ["int", "None"]; bool folds into int and int into float (as mypy accepts)."""
    seen = set(names)
    if "bool" in seen and ("int" in seen or "float" in seen):
        seen.discard("bool")
    if "int" in seen and "float" in seen:
        seen.discard("int")
    if len(seen - {"None"}) > _MAX_TYPES or not seen:
        return None
    ordered = sorted(seen - {"None"}) + (["None"] if "None" in seen else [])
    return " | ".join(ordered)


class _Recorder:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root) + os.sep
        # (file, first line, qualname) -> {"args": {name: set of type names | {"?"}}, "returns": set}
        self.calls: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.mine: dict[str, bool] = {}
        self.by_code: dict[Any, dict[str, Any] | None] = {}
        self.events = 0
        self.deadline = float("inf")  # the budget starts at the first call of a project function
        self.stopped = False
        self.lock = threading.Lock()

    def _entry(self, code: Any) -> dict[str, Any] | None:
        """The record for ``code``, or None when it is not a project function we can annotate."""
        if not self._ours(code.co_filename) or code.co_flags & _GENERATOR_FLAGS:
            return None
        qualname = getattr(code, "co_qualname", code.co_name)
        if "<" in qualname:  # lambdas, comprehensions, nested functions
            return None
        key = (code.co_filename, code.co_firstlineno, qualname)
        with self.lock:
            return self.calls.setdefault(key, {"args": defaultdict(set), "returns": set(), "n": 0})

    def _ours(self, filename: str) -> bool:
        ours = self.mine.get(filename)
        if ours is None:
            real = os.path.realpath(filename) if os.path.isabs(filename) else ""  # not <frozen ...>, <string>
            ours = real.startswith(self.root) and real.endswith(".py") and os.sep + "site-packages" + os.sep not in real
            self.mine[filename] = ours
        return ours

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        self.events += 1
        if not self.events & 0xFFF and time.monotonic() > self.deadline:
            sys.setprofile(None)  # the rest of the suite runs at full speed
            threading.setprofile(None)
            self.stopped = True
            return
        if event != "call" and event != "return":  # c_call, c_return, c_exception: most events
            return
        code = frame.f_code
        entry = self.by_code.get(code, _UNSEEN)
        if entry is None:  # not ours, or sampled enough
            return
        if entry is _UNSEEN:
            entry = self._entry(code)
            self.by_code[code] = entry
            if entry is None:
                return
            if self.deadline == float("inf"):  # not the test runner's and plugins' start-up
                self.deadline = time.monotonic() + TRACE_SECONDS
        if event == "call":
            entry["n"] += 1
            if entry["n"] > _SAMPLES:
                self.by_code[code] = None
                return
        module = frame.f_globals.get("__name__", "")
        with self.lock:
            if event == "call":
                n = code.co_argcount + code.co_kwonlyargcount
                for name in code.co_varnames[:n]:
                    if name in frame.f_locals:
                        entry["args"][name].add(_type_name(frame.f_locals[name], module) or "?")
            elif code.co_code[frame.f_lasti] in _RETURN_OPS:
                entry["returns"].add(_type_name(arg, module) or "?")

    def dump(self, out: str) -> None:
        rows = []
        with self.lock:
            for (filename, line, qualname), entry in self.calls.items():
                rows.append(
                    {
                        "file": filename,
                        "line": line,
                        "qualname": qualname,
                        "args": {k: sorted(v) for k, v in entry["args"].items()},
                        "returns": sorted(entry["returns"]),
                    }
                )
        Path(out).write_text(json.dumps(rows), encoding="utf-8")


def traced_argv(argv: list[str], out: Path, root: Path) -> list[str] | None:
    """``argv`` (``python -m X ...`` on our interpreter) run under the tracer, or None when it cannot be."""
    ours = bool(argv) and os.path.realpath(argv[0]) == os.path.realpath(sys.executable)
    if not ours or len(argv) < 3 or argv[1] != "-m":
        return None
    return [argv[0], "-m", TRACE_MODULE, str(out), str(root), *argv[1:]]


class TracedFunction:
    """What the test run saw one function receive and return (names to annotate with, or None)."""

    __slots__ = ("args", "path", "qualname", "returns")

    def __init__(self, path: str, qualname: str, args: dict[str, str], returns: str | None) -> None:
        self.path = path
        self.qualname = qualname
        self.args = args
        self.returns = returns

    def to_params(self) -> dict[str, Any]:
        return {"args": dict(self.args), "returns": self.returns}


def read_trace(out: Path, root: Path) -> dict[str, dict[str, TracedFunction]]:
    """The tracer's JSON as {POSIX path relative to ``root``: {qualname: TracedFunction}}.

    A parameter or return whose observed types include one we cannot name is left out.
    """
    try:
        rows = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    base = os.path.realpath(root)
    found: dict[str, dict[str, TracedFunction]] = defaultdict(dict)
    for row in rows if isinstance(rows, list) else []:
        try:
            rel = Path(os.path.relpath(os.path.realpath(row["file"]), base)).as_posix()
            args = {
                name: combined
                for name, names in dict(row["args"]).items()
                if "?" not in names and (combined := combine(list(names))) not in (None, "None")
            }
            returns = row["returns"]
            ret = combine(list(returns)) if returns and "?" not in returns else None
        except (KeyError, TypeError, ValueError):
            continue
        if rel.startswith("../"):
            continue
        found[rel][str(row["qualname"])] = TracedFunction(rel, str(row["qualname"]), args, ret)
    return dict(found)


def main(argv: list[str]) -> int:
    """Run ``-m MODULE ARGS`` under the recorder and write what it saw to OUT, however the run ends."""
    if len(argv) < 4 or argv[2] != "-m":
        print("usage: python -m pyagent.agents.typetrace OUT ROOT -m MODULE [ARGS...]", file=sys.stderr)
        return 2
    out, root, module, rest = argv[0], argv[1], argv[3], argv[4:]
    recorder = _Recorder(root)
    sys.argv = [module, *rest]
    code: int | str | None = 0
    threading.setprofile(recorder)
    sys.setprofile(recorder)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        recorder.dump(out)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
