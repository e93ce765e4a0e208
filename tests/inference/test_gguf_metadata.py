"""A GGUF file's metadata is untrusted input: every key the loader reads, written with the wrong type or
an impossible value, must fail with a ModelLoadError naming the file and the key, never a TypeError deep
in the loader, and never be used as it is (a NaN rope base or an out-of-range BOS id runs, silently wrong).

The files are real GGUF files written with the ``gguf`` package, read back by our reader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFValueType as V
from gguf import GGUFWriter

from pyagent.inference.errors import ModelLoadError
from pyagent.inference.gguf_loader import gguf_config
from pyagent.inference.gguf_reader import GGUFFile
from pyagent.inference.gguf_tokenizer import gguf_tokenizer
from pyagent.inference.rope import inverse_frequencies

# a byte-level BPE vocabulary: the 256 byte symbols, one merge, one control token
_BYTES = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(ord("¡"), ord("¬") + 1)] + \
    [chr(c) for c in range(ord("®"), ord("ÿ") + 1)]
_BYTES += [chr(256 + i) for i in range(256 - len(_BYTES))]
TOKENS = [*_BYTES, "Ġt", "<|endoftext|>"]


def _base() -> dict[str, tuple[Any, V]]:
    return {
        "llama.block_count": (1, V.UINT32),
        "llama.embedding_length": (32, V.UINT32),
        "llama.feed_forward_length": (64, V.UINT32),
        "llama.attention.head_count": (2, V.UINT32),
        "llama.attention.head_count_kv": (2, V.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
        "llama.rope.freq_base": (10000.0, V.FLOAT32),
        "llama.context_length": (64, V.UINT32),
        "tokenizer.ggml.model": ("gpt2", V.STRING),
        "tokenizer.ggml.pre": ("smollm", V.STRING),
        "tokenizer.ggml.tokens": (TOKENS, V.ARRAY),
        "tokenizer.ggml.token_type": ([1] * (len(TOKENS) - 1) + [3], V.ARRAY),
        "tokenizer.ggml.merges": (["Ġ t"], V.ARRAY),
        "tokenizer.ggml.bos_token_id": (len(TOKENS) - 1, V.UINT32),
        "tokenizer.ggml.eos_token_id": (len(TOKENS) - 1, V.UINT32),
        "tokenizer.ggml.add_bos_token": (False, V.BOOL),
        "tokenizer.chat_template": ("{% for m in messages %}{{ m['content'] }}{% endfor %}", V.STRING),
    }


def write(path: Path, changes: dict[str, tuple[Any, V] | None] | None = None,
          tensors: dict[str, np.ndarray] | None = None) -> Path:
    """A metadata-only (or nearly) llama GGUF: ``changes`` replaces or (None) drops keys of the base set."""
    meta = _base()
    for key, value in (changes or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    w = GGUFWriter(str(path), "llama")
    for key, (value, vtype) in meta.items():
        if vtype == V.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    w.add_tensor("token_embd.weight", np.zeros((len(TOKENS), 32), dtype=np.float32))
    for name, t in (tensors or {}).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _load(path: Path) -> None:
    g = GGUFFile(path)
    gguf_config(g)
    gguf_tokenizer(g)


def test_the_base_file_loads(tmp_path: Path) -> None:
    g = GGUFFile(write(tmp_path / "m.gguf"))
    config = gguf_config(g)
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim, config.vocab_size) == (1, 32, 16, len(TOKENS))
    assert config.bos_token_id == len(TOKENS) - 1 and config.rope_scaling is None
    tok = gguf_tokenizer(g)
    assert tok.decode(tok.encode("a test")) == "a test"


# (key, value written, what the error must say after "metadata key 'KEY' is ")
BAD_VALUES: list[tuple[str, tuple[Any, V], str]] = [
    ("llama.block_count", ("two", V.STRING), r"'two' \(a string\); expected an integer"),
    ("llama.block_count", (1.5, V.FLOAT32), r"1\.5 \(a number\); expected an integer"),
    ("llama.block_count", (True, V.BOOL), r"True \(a boolean\); expected an integer"),
    ("llama.block_count", (0, V.UINT32), r"0 \(an integer\); expected an integer of at least 1"),
    ("llama.embedding_length", ([32], V.ARRAY), r"\[32\] \(an array of 1\); expected an integer"),
    ("llama.attention.head_count", (0, V.UINT32), r"0 \(an integer\); expected an integer of at least 1"),
    ("llama.attention.head_count_kv", (-2, V.INT32), r"-2 \(an integer\); expected an integer of at least 1"),
    ("llama.feed_forward_length", ("64", V.STRING), r"'64' \(a string\); expected an integer"),
    ("llama.context_length", (0, V.UINT32), r"0 \(an integer\); expected an integer of at least 1"),
    ("llama.attention.key_length", (2.0, V.FLOAT32), r"2\.0 \(a number\); expected an integer"),
    ("llama.attention.layer_norm_rms_epsilon", (float("nan"), V.FLOAT32), r"nan \(a number\); expected a finite"),
    ("llama.attention.layer_norm_rms_epsilon", (-0.5, V.FLOAT32), r"-0\.5 \(a number\); expected a finite number above 0"),
    ("llama.rope.freq_base", (0.0, V.FLOAT32), r"0\.0 \(a number\); expected a finite number above 0"),
    ("llama.rope.freq_base", ("1e4", V.STRING), r"'1e4' \(a string\); expected a number"),
    ("llama.attention.sliding_window", ("4096", V.STRING), r"'4096' \(a string\); expected an integer"),
    ("general.alignment", (0, V.UINT32), r"0 \(an integer\); expected an integer of at least 1"),
    ("tokenizer.ggml.tokens", ([1, 2, 3], V.ARRAY), r"\[1, 2, 3\] \(an array of 3\); expected an array of strings"),
    ("tokenizer.ggml.token_type", (["1"] * len(TOKENS), V.ARRAY),
     rf"\['1', '1', .*\.\.\. \(an array of {len(TOKENS)}\); expected an array of integers"),
    ("tokenizer.ggml.merges", (7, V.UINT32), r"7 \(an integer\); expected an array of strings"),
    ("tokenizer.ggml.bos_token_id", (len(TOKENS), V.UINT32),
     rf"{len(TOKENS)} \(an integer\); expected a token id below the vocabulary's {len(TOKENS)} tokens"),
    ("tokenizer.ggml.eos_token_id", ("</s>", V.STRING), r"'</s>' \(a string\); expected an integer"),
    ("tokenizer.ggml.eot_token_id", (10**6, V.UINT32), r"1000000 \(an integer\); expected a token id below"),
    ("tokenizer.ggml.add_bos_token", (1, V.UINT32), r"1 \(an integer\); expected a boolean"),
    ("tokenizer.ggml.pre", (3, V.UINT32), r"3 \(an integer\); expected a string"),
    ("tokenizer.chat_template", (0, V.UINT32), r"0 \(an integer\); expected a string"),
    ("tokenizer.ggml.unknown_token_id", ("<unk>", V.STRING), r"'<unk>' \(a string\); expected an integer"),
]


@pytest.mark.parametrize(("key", "value", "says"), BAD_VALUES, ids=[f"{k}={v[0]!r}"[:60] for k, v, _ in BAD_VALUES])
def test_a_key_of_the_wrong_type_or_range_names_the_file_and_the_key(tmp_path: Path, key: str,
                                                                      value: tuple[Any, V], says: str) -> None:
    path = write(tmp_path / "bad.gguf", {key: value})
    with pytest.raises(ModelLoadError, match=rf"bad\.gguf: metadata key {re.escape(repr(key))} is {says}"):
        _load(path)


def test_token_types_must_be_one_per_token(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.gguf", {"tokenizer.ggml.token_type": ([1, 1], V.ARRAY)})
    with pytest.raises(ModelLoadError, match=rf"bad\.gguf: metadata key 'tokenizer\.ggml\.token_type' has 2 entries; "
                                             rf"expected {len(TOKENS)}"):
        _load(path)


def test_an_out_of_range_unknown_or_padding_id_means_none(tmp_path: Path) -> None:
    # converters write an id past the vocabulary for "no such token"; that is not an error
    path = write(tmp_path / "m.gguf", {"tokenizer.ggml.padding_token_id": (len(TOKENS) + 5, V.UINT32),
                                       "tokenizer.ggml.unknown_token_id": (-1, V.INT32)})
    _load(path)


def test_rotary_settings_this_decoder_cannot_honour_are_refused(tmp_path: Path) -> None:
    partial = write(tmp_path / "partial.gguf", {"llama.rope.dimension_count": (8, V.UINT32)})
    with pytest.raises(ModelLoadError, match=r"partial\.gguf: metadata key 'llama\.rope\.dimension_count' is 8, but "
                                             r"the heads have 16 dimensions"):
        _load(partial)
    yarn = write(tmp_path / "yarn.gguf", {"llama.rope.scaling.type": ("yarn", V.STRING)})
    with pytest.raises(ModelLoadError, match=r"yarn\.gguf: rotary scaling 'yarn' \(metadata key "
                                             r"'llama\.rope\.scaling\.type'\) is not supported"):
        _load(yarn)
    linear = write(tmp_path / "linear.gguf", {"llama.rope.scaling.type": ("linear", V.STRING),
                                              "llama.rope.scaling.factor": (4.0, V.FLOAT32)})
    config = gguf_config(GGUFFile(linear))
    assert config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def _converter_factors(head_dim: int, theta: float, factor: float, low: float, high: float, old_len: int) -> np.ndarray:
    """The ``rope_freqs.weight`` values llama.cpp's convert_hf_to_gguf.py writes for Llama 3's "llama3"
    rope scaling (its LlamaModel.generate_extra_tensors), restated here from the converter."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wavelen, high_wavelen = old_len / low, old_len / high
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def test_llama3_rotary_factors_from_the_file_equal_the_llama3_scaling_of_a_checkpoint(tmp_path: Path) -> None:
    # a Llama 3.x GGUF carries its "llama3" scaling as per-frequency factors; ignoring them changes every
    # position's rotation of the low frequencies, so the file's model would run wrong from the first token
    head_dim, theta = 16, 500000.0
    factors = _converter_factors(head_dim, theta, factor=32.0, low=1.0, high=4.0, old_len=64)
    assert 1.0 < len(set(factors.tolist())) <= len(factors)  # the three regimes occur (unscaled, smoothed, scaled)
    path = write(tmp_path / "l3.gguf", {"llama.rope.freq_base": (theta, V.FLOAT32)},
                 tensors={"rope_freqs.weight": factors})
    config = gguf_config(GGUFFile(path))
    assert config.rope_scaling is not None and config.rope_scaling["rope_type"] == "factors"
    from dataclasses import replace

    checkpoint = replace(config, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    plain = replace(config, rope_scaling=None)
    ours, reference = inverse_frequencies(config), inverse_frequencies(checkpoint)
    np.testing.assert_allclose(ours, reference, rtol=1e-6)
    assert not np.allclose(ours, inverse_frequencies(plain), rtol=1e-3)
    bad = write(tmp_path / "bad.gguf", tensors={"rope_freqs.weight": np.zeros(head_dim // 2, dtype=np.float32)})
    with pytest.raises(ModelLoadError, match=r"bad\.gguf: tensor 'rope_freqs\.weight' holds factors that are not "
                                             r"finite and positive"):
        gguf_config(GGUFFile(bad))


def test_a_forged_tensor_shape_cannot_wrap_around_to_a_small_size(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf")
    raw = bytearray(path.read_bytes())
    name = b"token_embd.weight"
    at = raw.index(name) + len(name)
    assert int.from_bytes(raw[at:at + 4], "little") == 2  # n_dims, then the dims (u64 each)
    raw[at + 4:at + 12] = (1 << 32).to_bytes(8, "little")
    raw[at + 12:at + 20] = (1 << 32).to_bytes(8, "little")  # 2^64 elements: 0 in 64-bit arithmetic
    bad = tmp_path / "forged.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"forged\.gguf: file is truncated: tensor 'token_embd\.weight' needs"):
        GGUFFile(bad)
    raw[at:at + 4] = (9).to_bytes(4, "little")
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"forged\.gguf: tensor 'token_embd\.weight' has 9 dimensions"):
        GGUFFile(bad)
