"""Checkpoint folders: dtypes, shards, architectures, and a clear error for each kind of bad folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pyagent.inference.config import ModelConfig, load_config
from pyagent.inference.engine import PagedAttentionEngine
from pyagent.inference.errors import ModelLoadError
from pyagent.inference.loader import load_model
from pyagent.inference.quant import Linear, QuantLinear, QuantMatrix
from pyagent.inference.rope import inverse_frequencies
from pyagent.inference.safetensors_io import load_tensors


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_bf16_and_fp16_files_are_widened_exactly(tmp_path: Path) -> None:
    values = np.array([[1.0, -2.5, 3.140625, 1e-3], [65504.0, -0.0, 0.5, 7.0]], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact bf16 of these values (low bits are 0 or cut)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]},
                         "__metadata__": {"format": "pt"}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    got = load_tensors(path)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    save_file({"h": values.astype(np.float16)}, str(tmp_path / "f16.safetensors"))
    np.testing.assert_array_equal(load_tensors(tmp_path / "f16.safetensors")["h"], values.astype(np.float16))


def test_sharded_and_half_precision_checkpoints_load_the_same_weights(tiny_dir: Path, tmp_path: Path) -> None:
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    sharded = copy_model(tiny_dir, tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(sharded / shard))
        weight_map |= dict.fromkeys(part, shard)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, w1 = load_model(tiny_dir)
    _, w2 = load_model(sharded)
    np.testing.assert_array_equal(w1.layers[1].qkv, w2.layers[1].qkv)
    np.testing.assert_array_equal(w1.lm_head, w2.lm_head)
    half = copy_model(tiny_dir, tmp_path / "half")
    save_file({n: t.astype(np.float16) for n, t in tensors.items()}, str(half / "model.safetensors"))
    _, w3 = load_model(half)
    # the 16-bit matrices stay 16-bit (ggml type F16 rows over the mapped file), decoding to the same values
    assert isinstance(w3.embed, QuantMatrix) and w3.embed.type_id == 1 and w3.embed.data.nbytes == 2 * w3.embed.data.size // 2
    np.testing.assert_array_equal(w3.embed.dequantize(), tensors["model.embed_tokens.weight"].astype(np.float16))
    qkv = w3.layers[1].qkv
    assert isinstance(qkv, QuantLinear) and all(p.type_id == 1 and not p.data.flags.owndata for p in qkv.parts)
    assert sum(p.data.nbytes for p in qkv.parts) == 2 * w1.layers[1].qkv.size


def _greedy_ids(engine: PagedAttentionEngine, prompts: list[str], n: int) -> list[list[int]]:
    from pyagent.inference.sampler import SamplingParams

    for i, text in enumerate(prompts):
        engine.add_request(str(i), engine.tokenizer.encode(text), SamplingParams(max_tokens=n, temperature=0.0,
                                                                                 ignore_eos=True))
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    return [done[str(i)] for i in range(len(prompts))]


PROMPTS = ["Once upon a time", "def fibonacci(n):", "The quick brown fox"]


def test_16bit_and_q8_0_weights_run_on_the_kernels_like_their_float32_values(tiny_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    tensors = load_file(str(tiny_dir / "model.safetensors"))
    for dtype, kind in (("F16", 1), ("BF16", 30)):
        folder = copy_model(tiny_dir, tmp_path / dtype)
        if dtype == "F16":
            save_file({n: t.astype(np.float16) for n, t in tensors.items()}, str(folder / "model.safetensors"))
            exact = {n: t.astype(np.float16).astype(np.float32) for n, t in tensors.items()}
        else:
            _write_bf16(folder / "model.safetensors", tensors)
            exact = {n: ((t.view(np.uint32) >> 16) << 16).view(np.float32) for n, t in tensors.items()}
        config, weights = load_model(folder)
        assert isinstance(weights.layers[0].gate_up, QuantLinear) and weights.layers[0].gate_up.parts[0].type_id == kind
        ref = copy_model(tiny_dir, tmp_path / f"{dtype}-as-f32")
        save_file(exact, str(ref / "model.safetensors"))
        kernels = PagedAttentionEngine.from_pretrained(folder)
        assert kernels.model.stack is not None  # decode steps run in Rust
        assert _greedy_ids(kernels, PROMPTS, 12) == _greedy_ids(PagedAttentionEngine.from_pretrained(ref), PROMPTS, 12)
    # --quantize q8_0: the same kernels on Q8_0 blocks, against float32 on the dequantized blocks
    config, q8 = load_model(tiny_dir, quantize="q8_0")
    assert all(p.type_id == 8 for lw in q8.layers for lin in (lw.qkv, lw.o, lw.gate_up, lw.down)
               for p in lin.parts if isinstance(lin, QuantLinear))

    def dense(w: Linear) -> np.ndarray:
        assert isinstance(w, QuantLinear)
        return np.ascontiguousarray(np.concatenate([p.dequantize() for p in w.parts]).T)

    deq = replace(q8, embed=q8.embed.dequantize() if isinstance(q8.embed, QuantMatrix) else q8.embed,
                  lm_head=dense(q8.lm_head),
                  layers=tuple(replace(lw, qkv=dense(lw.qkv), o=dense(lw.o), gate_up=dense(lw.gate_up),
                                       down=dense(lw.down)) for lw in q8.layers))
    tok = PagedAttentionEngine.from_pretrained(tiny_dir).tokenizer
    assert _greedy_ids(PagedAttentionEngine(config, q8, tok), PROMPTS, 12) == \
        _greedy_ids(PagedAttentionEngine(config, deq, tok), PROMPTS, 12)
    with pytest.raises(ModelLoadError, match="unknown quantization 'q3'"):
        load_model(tiny_dir, quantize="q3")


def _write_bf16(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {}
    blobs, at = [], 0
    for name, t in tensors.items():
        raw = (t.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_qwen2_biases_and_tied_embeddings(tiny_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_dir, tmp_path / "qwen")
    edit_config(folder, architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=True)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"lacks tensor 'model.layers.0.self_attn.q_proj.bias'"):
        load_model(folder)
    config = load_config(folder)
    rng = np.random.default_rng(0)
    for i in range(config.num_hidden_layers):
        for name, rows in (("q", 64), ("k", 32), ("v", 32)):
            tensors[f"model.layers.{i}.self_attn.{name}_proj.bias"] = rng.standard_normal(rows).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    config, weights = load_model(folder)
    assert config.attention_bias and config.tie_word_embeddings
    assert weights.layers[0].qkv_bias is not None and weights.layers[0].qkv_bias.shape == (128,)
    np.testing.assert_array_equal(weights.lm_head, tensors["model.embed_tokens.weight"].T)


def test_bad_folders_give_clear_errors(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        PagedAttentionEngine.from_pretrained(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        PagedAttentionEngine.from_pretrained(empty)

    no_weights = copy_model(tiny_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*.safetensors weights"):
        PagedAttentionEngine.from_pretrained(no_weights)

    no_tok = copy_model(tiny_dir, tmp_path / "no_tok")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is missing"):
        PagedAttentionEngine.from_pretrained(no_tok)

    unknown = copy_model(tiny_dir, tmp_path / "unknown")
    edit_config(unknown, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ModelLoadError, match="unknown architecture 'GPT2LMHeadModel'"):
        PagedAttentionEngine.from_pretrained(unknown)

    wrong_shape = copy_model(tiny_dir, tmp_path / "wrong_shape")
    edit_config(wrong_shape, intermediate_size=96)
    with pytest.raises(ModelLoadError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \[128, 64\], "
                                             r"expected \[96, 64\]"):
        PagedAttentionEngine.from_pretrained(wrong_shape)

    missing_shard = copy_model(tiny_dir, tmp_path / "missing_shard")
    (missing_shard / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelLoadError, match=r"shard model-00002-of-00002\.safetensors"):
        PagedAttentionEngine.from_pretrained(missing_shard)

    truncated = copy_model(tiny_dir, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="data offsets"):
        PagedAttentionEngine.from_pretrained(truncated)

    bad_json = copy_model(tiny_dir, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        PagedAttentionEngine.from_pretrained(bad_json)

    missing_field = copy_model(tiny_dir, tmp_path / "missing_field")
    raw = json.loads((missing_field / "config.json").read_text())
    del raw["hidden_size"]
    (missing_field / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="'hidden_size'"):
        PagedAttentionEngine.from_pretrained(missing_field)


def base_config(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                              "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    raw.update(changes)
    return raw


def test_config_forms_and_rope_variants() -> None:
    # transformers >= 5 writes theta and scaling as "rope_parameters".
    v5 = ModelConfig.from_dict(base_config(rope_parameters={"rope_theta": 5e5, "rope_type": "default"}))
    assert v5.rope_theta == 5e5 and v5.rope_scaling is None and v5.num_key_value_heads == 2 and v5.head_dim == 4
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    v4 = ModelConfig.from_dict(base_config(head_dim=64, rope_theta=5e5, rope_scaling=scaling))
    plain = ModelConfig.from_dict(base_config(head_dim=64, rope_theta=5e5))
    base, scaled = inverse_frequencies(plain), inverse_frequencies(v4)
    wavelen = 2 * np.pi / base
    # Llama 3: short wavelengths untouched, long ones divided by the factor, the band between interpolated.
    np.testing.assert_array_equal(scaled[wavelen < 16 / 4], base[wavelen < 16 / 4])
    np.testing.assert_allclose(scaled[wavelen > 16], base[wavelen > 16] / 8, rtol=1e-6)
    mid = (wavelen >= 4) & (wavelen <= 16)
    assert mid.any() and np.all(scaled[mid] <= base[mid]) and np.all(scaled[mid] >= base[mid] / 8)
    with pytest.raises(ModelLoadError, match="rope_scaling type 'yarn'"):
        ModelConfig.from_dict(base_config(rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    with pytest.raises(ModelLoadError, match="not a multiple"):
        ModelConfig.from_dict(base_config(num_key_value_heads=3))
    mistral = ModelConfig.from_dict(base_config(architectures=["MistralForCausalLM"], sliding_window=4096,
                                                max_position_embeddings=32768))
    assert mistral.max_context == 4096  # the engine never slides the window, so it stops at it
