"""Typed surface of the Rust core, ``pyagent._rust``. One section per Rust module."""

__version__: str

# -- walk
def walk(
    root: str,
    *,
    extensions: list[str] | None = None,
    globs: list[str] = ...,
    excludes: list[str] = ...,
    hidden: bool = False,
    no_ignore: bool = False,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Files under ``root`` (sorted) honoring .gitignore, and (path, reason) for unreadable entries."""

# -- metrics
from collections.abc import Callable  # noqa: E402  (one stub section per Rust module)

# One audited file: (path, error, skipped, mi, mi_rank, module complexity,
#   halstead (h1, h2, N1, N2, vocabulary, length, calculated_length, volume, difficulty, effort, time, bugs),
#   raw (loc, lloc, sloc, comments, multi, blank, single_comments),
#   functions [(name, qualname, def line, end line, C901 complexity)], seconds spent)
_AuditedFile = tuple[
    str,
    str | None,
    bool,
    float | None,
    str | None,
    int | None,
    tuple[int, int, int, int, int, int, float, float, float, float, float, float] | None,
    tuple[int, int, int, int, int, int, int] | None,
    list[tuple[str, str, int, int, int]],
    float,
]

def audit_tree(
    root: str,
    *,
    excludes: list[str] = ...,
    multi_as_comments: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[_AuditedFile], list[tuple[str, str]]]:
    """Every ``*.py`` under ``root`` analysed in parallel, and (path, reason) for unreadable entries."""

def audit_source(source: str, path: str = "<string>", *, multi_as_comments: bool = True) -> _AuditedFile:
    """One module given as text."""

# -- replace and diff
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
) -> tuple[
    list[tuple[str, bytes, bytes, int, str | None]], int, list[str], list[str], list[tuple[str, str]]
]:
    """(changes, scanned, binary, non_utf8, errors); a change is (path, original, new, matches, diff).
    Writes nothing. ValueError for an invalid regex or glob, FileNotFoundError for a missing root."""

def replace_in_text(
    text: str, pattern: str, replacement: str, *, literal: bool = False, multiline: bool = False
) -> tuple[str, int]:
    """The same replacement on one string: (new text, number of replacements)."""

def unified_diff(old: str, new: str, *, old_path: str = "a", new_path: str = "b", context: int = 3) -> str:
    """Unified diff of two texts ('' when equal)."""

# -- attention kernels
import numpy as np  # noqa: E402

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
    """Paged decode attention into ``out`` (float32 [seqs, heads, head_dim]); int32 tables; GIL released."""


# -- quantized weight kernels

def quant_matmul(
    out: np.ndarray,
    x: np.ndarray,
    weights: list[np.ndarray],
    qtypes: list[int],
    rows: list[int],
    portable: bool = False,
) -> None:
    """``out[n, sum(rows)] = x[n, cols] @ concat(weights)^T`` with GGML-quantized uint8 weights; GIL released."""

def quant_dequantize(
    out: np.ndarray, weight: np.ndarray, qtype_id: int, rows: int, ids: np.ndarray | None = None
) -> None:
    """Decode a quantized matrix (or its rows ``ids``, int64) into float32 ``out``; GIL released."""
