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

# -- replace and diff

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

