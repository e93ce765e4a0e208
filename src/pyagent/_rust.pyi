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

