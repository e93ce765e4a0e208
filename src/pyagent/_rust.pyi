"""Typed surface of the Rust core, ``pyagent._rust``. One section per Rust module.

``python -m mypy.stubtest pyagent._rust`` (run by ``.ci/run``) checks this file against the module.
"""

from collections.abc import Callable
from typing import final

import numpy as np

__version__: str
__all__ = [
    "DecoderStack",
    "FileHealth",
    "FunctionHealth",
    "Halstead",
    "RawMetrics",
    "ReplaceChange",
    "ReplaceResult",
    "RustPanicError",
    "TreeAudit",
    "Unreadable",
    "WalkResult",
    "__version__",
    "audit_source",
    "audit_tree",
    "paged_attention_decode",
    "quant_dequantize",
    "quant_matmul",
    "quant_quantize_q8_0",
    "replace",
    "walk",
]

# -- errors
class RustPanicError(Exception):
    """A bug in PyAgent's Rust core (a Rust panic), raised as an Exception with the panic's message."""

# -- walk
@final
class Unreadable:
    """An entry a walk could not read: its path (empty when the error names none) and why."""

    @property
    def path(self) -> str: ...
    @property
    def reason(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: None  # type: ignore[assignment]

@final
class WalkResult:
    """The files under a root (sorted) and the entries that could not be read."""

    @property
    def files(self) -> list[str]: ...
    @property
    def errors(self) -> list[Unreadable]: ...

def walk(
    root: str,
    *,
    extensions: list[str] | None = None,
    globs: list[str] = ...,
    excludes: list[str] = ...,
    hidden: bool = False,
    no_ignore: bool = False,
) -> WalkResult:
    """Files under ``root`` (sorted) honoring .gitignore, and the entries that could not be read.
    A root that cannot be opened raises the OSError of its kind; an invalid glob raises ValueError."""

# -- metrics
@final
class FunctionHealth:
    """One function or method; ``lineno`` is the line of its ``def`` keyword (decorators excluded)."""

    @property
    def name(self) -> str: ...
    @property
    def qualname(self) -> str: ...
    @property
    def lineno(self) -> int: ...
    @property
    def endline(self) -> int: ...
    @property
    def complexity(self) -> int:
        """C901 complexity, as ruff counts it."""

@final
class Halstead:
    """Module Halstead metrics with radon's names and definitions."""

    @property
    def h1(self) -> int: ...
    @property
    def h2(self) -> int: ...
    @property
    def N1(self) -> int: ...
    @property
    def N2(self) -> int: ...
    @property
    def vocabulary(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def calculated_length(self) -> float: ...
    @property
    def volume(self) -> float: ...
    @property
    def difficulty(self) -> float: ...
    @property
    def effort(self) -> float: ...
    @property
    def time(self) -> float: ...
    @property
    def bugs(self) -> float: ...

@final
class RawMetrics:
    """radon's raw line counts (``loc = sloc + blank + multi + single_comments``)."""

    @property
    def loc(self) -> int: ...
    @property
    def lloc(self) -> int: ...
    @property
    def sloc(self) -> int: ...
    @property
    def comments(self) -> int: ...
    @property
    def multi(self) -> int: ...
    @property
    def blank(self) -> int: ...
    @property
    def single_comments(self) -> int: ...

@final
class FileHealth:
    """Health of one file. ``error`` says why metrics are missing (syntax error, skipped file)."""

    @property
    def path(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def skipped(self) -> bool: ...
    @property
    def mi(self) -> float | None: ...
    @property
    def mi_rank(self) -> str | None: ...
    @property
    def complexity(self) -> int | None:
        """radon's total complexity of the module."""
    @property
    def halstead(self) -> Halstead | None: ...
    @property
    def raw(self) -> RawMetrics | None: ...
    @property
    def functions(self) -> tuple[FunctionHealth, ...]: ...
    @property
    def max_complexity(self) -> int:
        """The largest C901 complexity of its functions (0 without functions)."""
    @property
    def seconds(self) -> float:
        """CPU seconds of the analysing thread (read, parse, all metrics); not part of equality."""
    def to_dict(self) -> dict[str, object]:
        """The file as the JSON report writes it (everything but ``seconds`` and ``max_complexity``)."""

@final
class TreeAudit:
    """One ``FileHealth`` per ``*.py`` file (walk order) and the entries the walk could not read."""

    @property
    def files(self) -> list[FileHealth]: ...
    @property
    def errors(self) -> list[Unreadable]: ...

def audit_tree(
    root: str,
    *,
    excludes: list[str] = ...,
    multi_as_comments: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> TreeAudit:
    """Every ``*.py`` under ``root`` analysed in parallel."""

def audit_source(source: str, path: str = "<string>", *, multi_as_comments: bool = True) -> FileHealth:
    """One module given as text."""

# -- replace and diff
@final
class ReplaceChange:
    """One file the replacement changes (absolute path); nothing has been written."""

    @property
    def path(self) -> str: ...
    @property
    def original(self) -> bytes: ...
    @property
    def new(self) -> bytes: ...
    @property
    def matches(self) -> int: ...
    @property
    def diff(self) -> str | None: ...

@final
class ReplaceResult:
    """The changes, files scanned, files skipped as binary or non-UTF-8, and unreadable entries."""

    @property
    def changes(self) -> list[ReplaceChange]: ...
    @property
    def scanned(self) -> int: ...
    @property
    def binary(self) -> list[str]: ...
    @property
    def non_utf8(self) -> list[str]: ...
    @property
    def errors(self) -> list[Unreadable]: ...

def replace(
    root: str,
    pattern: str,
    replacement: str,
    *,
    literal: bool = False,
    multiline: bool = False,
    globs: list[str] = ...,
    excludes: list[str] = ...,
    hidden: bool = False,
    no_ignore: bool = False,
    diff: bool = False,
) -> ReplaceResult:
    """The replacement over every file under ``root``; writes nothing. ValueError for an invalid regex
    or glob, the OSError of its kind for a root that cannot be opened."""

# -- attention kernels
def paged_attention_decode(
    out: np.ndarray,
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    block_tables: np.ndarray,
    context_lens: np.ndarray,
    scale: float,
    partition_size: int = 512,
) -> None:
    """Paged decode attention into ``out`` (float32 [seqs, heads, head_dim]); caches both float32 or both
    float16; int32 tables; GIL released."""

# -- quantized weight kernels

def quant_matmul(
    out: np.ndarray,
    x: np.ndarray,
    weights: list[np.ndarray],
    qtypes: list[int],
    rows: list[int],
    portable: bool = False,
    int8: str | None = None,
) -> None:
    """``out[n, sum(rows)] = x[n, cols] @ concat(weights)^T`` with GGML-quantized uint8 weights; GIL released.

    ``int8`` names int8-activation kernels for the quantized weight types, Q4_0 to Q6_K ("auto", "portable",
    "avx2", "avxvnni", "avx512vnni"; one the CPU lacks is a ValueError); None keeps float activations (and
    F16/BF16/F32 rows always do)."""

def quant_dequantize(
    out: np.ndarray, weight: np.ndarray, qtype_id: int, rows: int, ids: np.ndarray | None = None
) -> None:
    """Decode a quantized matrix (or its rows ``ids``, int64) into float32 ``out``; GIL released."""

def quant_quantize_q8_0(out: np.ndarray, x: np.ndarray) -> None:
    """Quantize float32 rows ``x`` (``[rows, cols]``, cols a multiple of 32) into Q8_0 blocks in uint8 ``out``."""

_ProjSpec = tuple[list[np.ndarray], list[int], list[int], np.ndarray | None]

@final
class DecoderStack:
    """Every decoder layer of one model for a step, run in Rust over the (memory-mapped) weights."""

    def __new__(cls, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, eps: float,
                int8: str | None = None) -> DecoderStack: ...
    def add_layer(
        self, input_norm: np.ndarray, post_norm: np.ndarray, qkv: _ProjSpec, o: _ProjSpec, gate_up: _ProjSpec,
        down: _ProjSpec,
    ) -> None:
        """Append a layer: the norms and the four projections as (weights, ggml types, rows, bias or None)."""
    def forward(
        self,
        x: np.ndarray,
        positions: np.ndarray,
        slots: np.ndarray,
        block_tables: np.ndarray,
        context_lens: np.ndarray,
        k_cache: np.ndarray,
        v_cache: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        scale: float,
        partition_size: int = 512,
        logits: np.ndarray | None = None,
        logit_rows: np.ndarray | None = None,
    ) -> None:
        """Run every layer on ``x`` ([tokens, hidden], in place), writing each token's K/V at its slot; with
        ``logits`` ([len(logit_rows), vocab]) also the final norm and the head (``set_head``) on those rows."""
    def set_head(self, norm: np.ndarray, head: _ProjSpec, vocab: int) -> None:
        """Set the final norm and the output projection, so that ``forward`` can return logits."""
    @property
    def int8_products(self) -> bool:
        """Whether every layer's products take int8 activations (16-bit and float weights keep float ones)."""
    def __len__(self) -> int: ...
