"""Run a model's own Jinja chat template the way transformers' ``apply_chat_template`` does.

Same environment (``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension and a ``{% generation %}`` block), the same globals (``raise_exception``,
``strftime_now``) and ``tojson`` filter, and the same variables (``messages``, ``add_generation_prompt``,
``tools``, ``documents`` and the special tokens such as ``bos_token``/``eos_token``). The sandbox matters:
templates come with downloaded model files and must not reach Python internals. Nor may one take the
server down: transformers' sandbox bounds neither time nor memory, so here a render stops after
``RENDER_SECONDS`` (a line tracer on the template's own code), and no operation may build a string or
list of over ``MAX_TEXT`` items (``*``, ``+``, ``%``, ``~``, method calls and filters are checked).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A conversation's prompt is far below this (a 128k-token context is ~0.5M characters); a template
# building more is broken or hostile.
MAX_TEXT = 4_000_000
RENDER_SECONDS = 2.0


class ChatTemplateError(ValueError):
    """A template that does not compile, or that raised (``raise_exception``) for this conversation."""


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; it renders as is."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's Extension API declares a class attribute)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > MAX_TEXT:
        raise SecurityError(f"the template built a value of {len(value):,} items (at most {MAX_TEXT:,})")
    return value


def _check_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """A width argument (``center(10**9)``, ``'%*s'``) beyond ``MAX_TEXT`` is refused before the call
    allocates anything."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_TEXT:
            raise SecurityError(f"the template asks for a width of {a:,} (at most {MAX_TEXT:,})")


# a field width or precision written into a format string ("%999999999s", "{:>999999999}"), and a
# width taken from the arguments ("%*s", "{:>{}}")
_WIDE_FIELD = re.compile(r"%[-#0 +]*(?:\d{8,}|\d*\.\d{8,})|\{[^{}]*:[^{}]*\d{8,}[^{}]*\}")
_ARG_WIDTH = re.compile(r"%[-#0 +]*\*|%[-#0 +]*\d*\.\*|\{[^{}]*:[^{}]*\{")
# str methods and filters whose integer argument is the width of what they build
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap"})


def _check_format(fmt: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    if not isinstance(fmt, str):
        return
    if _WIDE_FIELD.search(fmt):
        raise SecurityError("the template formats with a field width or precision of 8 digits or more")
    if _ARG_WIDTH.search(fmt):
        _check_args(args, kwargs)


def _check_replace(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str) and old:
        _check_size_of(len(s) + max(s.count(old) * (len(new) - len(old)), 0))


def _check_size_of(n: int) -> None:
    if n > MAX_TEXT:
        raise SecurityError(f"the template would build a value of {n:,} items (at most {MAX_TEXT:,})")


def _bounded(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """Filter ``name`` with its result's size checked, and its widths or growth before it runs."""
    @functools.wraps(f)  # keeps jinja's pass_context/pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        if name in _WIDTH_FILTERS:
            _check_args(args, kwargs)
        elif name in ("replace", "format"):
            # the value, then the filter's own arguments (after any context jinja passes first)
            strings = [a for a in args if isinstance(a, str)]
            if name == "replace" and len(strings) >= 3:
                _check_replace(*strings[:3])
            elif name == "format" and strings:
                _check_format(strings[0], args, kwargs)
        return _check_size(f(*args, **kwargs))

    return checked


class _CodeGenerator(CodeGenerator):
    """``a ~ b`` compiles to a join the sandbox does not see; route it through a size check."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_TEXT:
                    raise SecurityError(f"the template repeats {len(seq):,} items {n:,} times (at most {MAX_TEXT:,})")
        elif operator == "**" and isinstance(right, int) and abs(right) > 1024:
            raise SecurityError(f"the template raises to the power {right:,} (at most 1,024)")
        elif operator == "%":
            _check_format(left, right if isinstance(right, tuple) else (right,), {})
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        target, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
        if isinstance(target, str):
            if name in _WIDTH_METHODS:
                _check_args(args, kwargs)
            elif name in ("format", "format_map"):
                _check_format(target, args, kwargs)
            elif name == "replace" and len(args) >= 2:
                _check_replace(target, args[0], args[1])
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def checked_join(self, parts: Sequence[Any]) -> str:
        return str(_check_size("".join(str(p) for p in parts)))


class _Deadline:
    """Stops a render that runs past ``RENDER_SECONDS``: a tracer on the template's compiled code (the
    loops that could run long) checks the clock on each line; other frames run untraced."""

    def __init__(self) -> None:
        self.end = time.monotonic() + RENDER_SECONDS

    def __enter__(self) -> _Deadline:
        self.previous = sys.gettrace()
        sys.settrace(self._frame)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self.previous)

    def _frame(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._line if frame.f_code.co_filename == "<template>" else None

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > self.end:
            raise SecurityError(f"the template ran for over {RENDER_SECONDS:g} s")
        return self._line


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols])
    env.filters = {name: _bounded(name, f) for name, f in env.filters.items()}
    env.filters["tojson"] = _bounded("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A compiled template plus where it came from (named in every error) and the special tokens."""

    def __init__(self, source: str, origin: str, special_tokens: Mapping[str, str]) -> None:
        self.source = source
        self.origin = origin
        self.special_tokens = dict(special_tokens)
        try:
            self._template = _compile(source)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"chat template from {origin} does not compile: {exc}") from None

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> str:
        try:
            with _Deadline():
                out = self._template.render(messages=list(messages), tools=tools, documents=None,
                                            add_generation_prompt=add_generation_prompt,
                                            **self.special_tokens, **kwargs)
            return str(_check_size(out))
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"chat template from {self.origin} raised: {exc}") from None
        except (ArithmeticError, LookupError, TypeError, ValueError, MemoryError, RecursionError) as exc:
            # the template's own bug ({{ 1 / 0 }}, a string method on None...): the template's error
            raise ChatTemplateError(f"chat template from {self.origin} failed: {type(exc).__name__}: {exc}") from None
