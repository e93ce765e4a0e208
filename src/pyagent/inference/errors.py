"""Errors of the inference engine: each names what is wrong and what to do about it."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A checkpoint folder cannot be used: missing files, unknown architecture, bad tensors."""
