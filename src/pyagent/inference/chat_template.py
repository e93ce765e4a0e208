"""Run a model's own Jinja chat template the way transformers' ``apply_chat_template`` does.

Same environment (``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension and a ``{% generation %}`` block), the same globals (``raise_exception``,
``strftime_now``) and ``tojson`` filter, and the same variables (``messages``, ``add_generation_prompt``,
``tools``, ``documents`` and the special tokens such as ``bos_token``/``eos_token``). The sandbox matters:
templates come with downloaded model files and must not reach Python internals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


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


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
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
            return str(self._template.render(messages=list(messages), tools=tools, documents=None,
                                             add_generation_prompt=add_generation_prompt,
                                             **self.special_tokens, **kwargs))
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"chat template from {self.origin} raised: {exc}") from None
