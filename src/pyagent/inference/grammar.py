"""Structured output: a JSON schema enforced while decoding, with llguidance as the grammar engine.

Why llguidance (measured here on SmolLM2's 49,152-token byte-level BPE vocabulary, see the stream's
report): it installs as one 7.5 MB wheel without torch; it reads the vocabulary straight from the
``tokenizers`` JSON we already build for every model (GGUF BPE or SentencePiece alike); a schema
compiles in about 1 ms and a token mask costs about 70 us, computed lazily per step, so it never builds
a whole automaton up front. xgrammar pulls in torch and transformers (gigabytes); outlines-core builds
the full index before the first token (about 3 s for a two-field schema with a ``maxLength``).

One ``GrammarCompiler`` per engine holds the engine-wide tokenizer view (about 1 s to build, so it is
made on the first constrained request); every constrained request gets its own matcher, so batched
sequences are constrained independently and their masks are computed together, in parallel.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from pyagent.inference.tokenizer import Tokenizer

if TYPE_CHECKING:  # a stub-only type
    from llguidance._lib import JsonCompileOptions

# One fixed layout, the one models write by themselves: free whitespace would let a weak model pad
# forever inside valid JSON. A schema's own "x-guidance" options still override it.
_JSON_LAYOUT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ",
                                                "key_separator": ": "}


class GrammarError(ValueError):
    """A schema the grammar engine cannot enforce; ``param`` names the request field that carried it."""

    def __init__(self, message: str, param: str = "response_format") -> None:
        super().__init__(message)
        self.param = param


class GrammarCompiler:
    """Turns JSON schemas into per-request matchers over one model's vocabulary."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._executor = llguidance.LLExecutor()

    @functools.cached_property
    def _lltokenizer(self) -> llguidance.LLTokenizer:
        return llguidance.LLTokenizer(self._tokenizer.to_json(), n_vocab=self.vocab_size,
                                      eos_token=sorted(self._tokenizer.eos_token_ids) or None)

    def matcher(self, schema: Mapping[str, Any], param: str = "response_format") -> llguidance.LLMatcher:
        """A fresh matcher for ``schema``; a schema it cannot compile raises ``GrammarError``."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_LAYOUT)
        except (TypeError, ValueError) as exc:
            raise GrammarError(f"{param}: the JSON schema is not valid: {exc}", param) from None
        matcher = llguidance.LLMatcher(self._lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"{param}: the JSON schema cannot be enforced: {matcher.get_error()}", param)
        return matcher

    def masks(self, matchers: Sequence[llguidance.LLMatcher]) -> np.ndarray:
        """The allowed-token bitmasks (one int32 row of ``ceil(vocab/32)`` per matcher), in parallel."""
        bitmask = llg_numpy.allocate_token_bitmask(len(matchers), self.vocab_size)
        llg_numpy.fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], bitmask)
        return bitmask
