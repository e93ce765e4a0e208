"""Text embedders for the semantic part of the knowledge store.

The store needs *some* embedder that works offline with nothing to download, so the default is
:class:`HashingEmbedder`: a bag of hashed word, word-bigram and character-trigram features. Be clear
about what it is: a *lexical* similarity measure (like scikit-learn's ``HashingVectorizer`` without
IDF), not a semantic one. It ranks texts that share words and word pieces well: the same error
message with different file names or numbers, inflected forms ("failed"/"failing"), small typos.
It knows nothing of synonyms or paraphrase ("crash" and "segfault" are unrelated to it). When the
user installs ``sentence-transformers`` (and has a model available), :class:`SentenceTransformerEmbedder`
gives real semantic similarity; it is never a dependency of PyAgent.

A store records the name of the embedder its vectors came from and refuses to mix vectors of
different embedders, because cosine scores across two vector spaces mean nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import warnings
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_SENTENCE_MODEL",
    "Embedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "resolve_embedder",
]

DEFAULT_SENTENCE_MODEL = "all-MiniLM-L6-v2"

_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 row vectors of a fixed dimension."""

    @property
    def name(self) -> str:
        """Identifies the vector space; stored with the vectors so spaces are never mixed."""
        ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class HashingEmbedder:
    """Offline lexical embedder: hashed word unigrams, word bigrams and character trigrams.

    Each feature is hashed (CRC-32, stable across processes, unlike ``hash()``) into ``dim`` buckets
    with a hash-derived sign, counts are damped with ``1 + log(count)``, and the vector is
    L2-normalised, so the dot product of two vectors is their cosine similarity. Good for "have we
    seen this error before?"; not for meaning. Deterministic: the same text always gives the same
    vector on every machine.
    """

    def __init__(self, dim: int = 512) -> None:
        if dim < 16:
            raise ValueError(f"dim must be at least 16, got {dim}")
        self._dim = dim

    @property
    def name(self) -> str:
        return f"hashing-ngram-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> dict[int, float]:
        words = _WORD.findall(text.lower())
        counts: dict[str, int] = {}
        for i, word in enumerate(words):
            counts["w:" + word] = counts.get("w:" + word, 0) + 1
            if i:
                bigram = f"b:{words[i - 1]} {word}"
                counts[bigram] = counts.get(bigram, 0) + 1
            padded = f"<{word}>"
            for j in range(len(padded) - 2):
                tri = "c:" + padded[j : j + 3]
                counts[tri] = counts.get(tri, 0) + 1
        vec: dict[int, float] = {}
        for feature, count in counts.items():
            h = zlib.crc32(feature.encode("utf-8"))
            bucket = h % self._dim
            sign = 1.0 if (h >> 31) & 1 else -1.0
            vec[bucket] = vec.get(bucket, 0.0) + sign * (1.0 + math.log(count))
        return vec

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for bucket, value in self._features(text).items():
                out[row, bucket] = value
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0.0] = 1.0
        result: npt.NDArray[np.float32] = (out / norms).astype(np.float32)
        return result


class SentenceTransformerEmbedder:
    """A sentence-transformers model, used only when the user has installed the package.

    The model is loaded on first use from the local cache (``local_files_only``), so PyAgent never
    downloads weights behind the user's back; fetch the model once yourself to use it.
    """

    def __init__(self, model: str = DEFAULT_SENTENCE_MODEL) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ImportError("sentence-transformers is not installed (pip install sentence-transformers)")
        self._model_name = model
        self._model: Any = None
        self._dim: int | None = None

    def _load(self) -> Any:
        if self._model is None:
            module = importlib.import_module("sentence_transformers")  # optional, untyped dependency
            self._model = module.SentenceTransformer(self._model_name, local_files_only=True)
            self._dim = int(self._model.get_sentence_embedding_dimension())
        return self._model

    @property
    def name(self) -> str:
        return f"sentence-transformers:{self._model_name}"

    @property
    def dim(self) -> int:
        self._load()
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        vectors = self._load().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        result: npt.NDArray[np.float32] = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        return result


def resolve_embedder(spec: str | Embedder | None) -> Embedder:
    """Map a name to an embedder: ``hashing-ngram-v1-<dim>``, ``sentence-transformers:<model>``, ``auto``.

    ``auto`` (and ``None``) picks sentence-transformers when it is installed and its default model
    loads from the local cache, and the offline hashing embedder otherwise.
    """
    if spec is not None and not isinstance(spec, str):
        return spec
    if spec is None or spec == "auto":
        if importlib.util.find_spec("sentence_transformers") is not None:
            try:
                candidate = SentenceTransformerEmbedder()
                candidate.dim  # noqa: B018 - loads the model now so a failure falls back here
                return candidate
            except Exception as exc:  # any load failure: fall back, and say so
                warnings.warn(
                    f"sentence-transformers is installed but {DEFAULT_SENTENCE_MODEL} did not load "
                    f"({exc}); using the offline hashing embedder",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return HashingEmbedder()
    if spec.startswith("hashing-ngram-v1-"):
        return HashingEmbedder(int(spec.rsplit("-", 1)[1]))
    if spec == "hashing":
        return HashingEmbedder()
    if spec.startswith("sentence-transformers:"):
        return SentenceTransformerEmbedder(spec.split(":", 1)[1])
    raise ValueError(
        f"unknown embedder {spec!r}: use 'hashing', 'hashing-ngram-v1-<dim>', "
        "'sentence-transformers:<model>' or 'auto'"
    )
