"""GGUF files: the reader and loader on the real SmolLM2 file and on small files written by gguf-py.

Bad files (truncated, an unknown or kernel-less quantization type, an unsupported architecture) must
fail with an error that names the file and the tensor or metadata key.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

from pyagent.inference.engine import PagedAttentionEngine
from pyagent.inference.errors import ModelLoadError
from pyagent.inference.gguf_loader import load_gguf_model
from pyagent.inference.gguf_reader import GGUFFile
from pyagent.inference.gguf_tokenizer import gguf_tokenizer
from pyagent.inference.loader import ModelWeights
from pyagent.inference.quant import Linear, QuantLinear, QuantMatrix, embedding_rows
from tests.inference.data.chat_cases import GREEDY_PROMPTS


def test_real_file_is_read_without_copying(smollm2_path: Path) -> None:
    g = GGUFFile(smollm2_path)
    assert g.get("general.architecture") == "llama" and g.get("llama.block_count") == 30
    assert len(g.tensors) == 272
    t = g.tensors["blk.0.ffn_gate.weight"]
    assert (t.type_name, t.shape) == ("Q4_1", (1536, 576))
    # every tensor is a read-only view of the one mapping, and together they cover most of the file
    assert all(not x.data.flags.writeable and not x.data.flags.owndata for x in g.tensors.values())
    assert sum(x.data.nbytes for x in g.tensors.values()) > 0.9 * smollm2_path.stat().st_size


def test_real_file_loads_with_matrices_kept_quantized(smollm2_path: Path) -> None:
    _, config, weights = load_gguf_model(smollm2_path)
    assert (config.architecture, config.hidden_size, config.num_key_value_heads) == ("LlamaForCausalLM", 576, 3)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0
    layer = weights.layers[0]
    assert isinstance(layer.qkv, QuantLinear) and [p.rows for p in layer.qkv.parts] == [576, 192, 192]
    assert isinstance(weights.embed, QuantMatrix) and isinstance(weights.lm_head, QuantLinear)
    assert weights.lm_head.parts[0] is weights.embed  # tied: one copy of the table, used both ways
    # v and the MLP are views of the mapped file; only Q/K rows were reordered (see gguf_loader)
    for view in (layer.qkv.parts[2].data, layer.down.parts[0].data, weights.embed.data):
        assert not view.flags.owndata and not view.flags.writeable


def test_tokenizer_from_metadata(smollm2_path: Path) -> None:
    tok = gguf_tokenizer(GGUFFile(smollm2_path))
    text = "Hello world! 2024 is   here\n\tdef f(x): return x**2  # naïve café"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] != 1  # add_bos_token is false in this file
    assert tok.encode("12", add_special_tokens=False) == [tok.encode("1")[0], tok.encode("2")[0]]  # digits split
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == 1  # control tokens match whole
    assert tok.eos_token_ids == {2}
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    # the file's own template: its default system prompt is added when none is given
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids.count(1) == 3 and ids[0] == 1


def test_greedy_chat_answers_the_capital_of_france(smollm2_path: Path) -> None:
    from pyagent.inference.sampler import SamplingParams

    engine = PagedAttentionEngine.from_pretrained(smollm2_path, max_num_seqs=2)
    assert engine.model_name == "SmolLM2-135M-Instruct.Q4_1"
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    engine.add_request("a", ids, SamplingParams(max_tokens=24, temperature=0.0))
    text = ""
    while engine.has_unfinished():
        for out in engine.step():
            text = out.text
    assert "Paris" in text


def _decode_logits(smollm2_path: Path, use_stack: bool, int8: bool, kv_cache_dtype: str = "float32"
                   ) -> dict[tuple[str, int], np.ndarray]:
    from pyagent.inference.sampler import SamplingParams

    g, config, weights = load_gguf_model(smollm2_path)
    tok = gguf_tokenizer(g)
    engine = PagedAttentionEngine(config, weights, tok, max_num_seqs=4, activations="int8" if int8 else "float32",
                                  kv_cache_dtype=kv_cache_dtype)
    assert engine.model.stack is not None
    if not use_stack:
        engine.model.stack = None
    seen: dict[tuple[str, int], np.ndarray] = {}

    def observe(rid: str, pos: int, row: np.ndarray) -> None:
        seen[(rid, pos)] = row.copy()

    engine.logits_observer = observe
    for i, prompt in enumerate(["The capital of France is", "def add(a, b):", "1, 2, 3,"]):
        engine.add_request(str(i), tok.encode(prompt), SamplingParams(max_tokens=10, temperature=0.0,
                                                                      ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return seen


def test_rust_decode_step_gives_the_python_layers_logits(smollm2_path: Path) -> None:
    """The one-call Rust decode step against the NumPy layer loop, on the same quantized weights.

    With float activations the two agree to float rounding. With int8 activations (as llama.cpp;
    then prompts run in the stack too) each product rounds its input to 8 bits per 32-element
    block, so the logits move by a small fraction of their spread; the greedy choice stays float's except
    where float itself nearly ties (the two continuations part there, so the comparison stops)."""
    slow = _decode_logits(smollm2_path, use_stack=False, int8=False)
    fast = _decode_logits(smollm2_path, use_stack=True, int8=False)
    int8 = _decode_logits(smollm2_path, use_stack=True, int8=True)
    assert fast.keys() == slow.keys() == int8.keys() and len(fast) == 30
    parted: set[str] = set()
    for key in sorted(fast):
        assert np.abs(fast[key] - slow[key]).max() < 1e-3, key
        assert fast[key].argmax() == slow[key].argmax()
        if key[0] in parted:
            continue
        assert np.abs(int8[key] - slow[key]).max() < 0.05 * np.ptp(slow[key]), key
        ours, theirs = int(int8[key].argmax()), int(slow[key].argmax())
        if ours != theirs:
            assert slow[key][theirs] - slow[key][ours] < 0.1 * np.std(slow[key]), key
            parted.add(key[0])
    assert len(parted) < 3
    assert max(float(np.abs(int8[k] - slow[k]).max()) for k in fast) > 1e-3  # int8 kernels really ran


def _logits_by_position(engine: PagedAttentionEngine, rid: str) -> dict[int, np.ndarray]:
    rows: dict[int, np.ndarray] = {}
    previous = engine.logits_observer

    def observe(r: str, pos: int, row: np.ndarray) -> None:
        if r == rid:
            rows[pos] = row.copy()
        if previous is not None:
            previous(r, pos, row)

    engine.logits_observer = observe
    return rows


def test_a_generated_token_is_computed_alike_whether_or_not_another_prompt_shares_its_step(
        smollm2_path: Path) -> None:
    """With int8 activations: a sequence's decode logits are bit-identical when it runs alone and when
    other requests share its steps, first prefilling (chunks of their prompts beside its token) and then
    decoding beside it (the several-token kernels give each token the one-token kernel's result), so
    scheduling never changes what a request generates."""
    from pyagent.inference.sampler import SamplingParams

    g, config, weights = load_gguf_model(smollm2_path)
    tok = gguf_tokenizer(g)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompt = tok.encode("The capital of France is")
    alone_engine = PagedAttentionEngine(config, weights, tok, max_num_seqs=4, enable_prefix_caching=False,
                                        activations="int8")
    alone = _logits_by_position(alone_engine, "a")
    alone_engine.add_request("a", prompt, params)
    while alone_engine.has_unfinished():
        alone_engine.step()
    # small prefill chunks, so that the long prompts below share many steps with "a"'s decode tokens
    engine = PagedAttentionEngine(config, weights, tok, max_num_seqs=4, enable_prefix_caching=False,
                                  max_num_batched_tokens=24, activations="int8")
    shared = _logits_by_position(engine, "a")
    several = 0  # steps made of one token for each of several sequences
    stack = engine.model.stack
    assert stack is not None

    class CountingStack:  # the model's Rust stack, counting steps that decode several sequences at once
        def forward(self, x: np.ndarray, positions: np.ndarray, slots: np.ndarray, block_tables: np.ndarray,
                    *args: object) -> None:
            nonlocal several
            several += len(x) >= 2 and len({tuple(t) for t in block_tables}) == len(x)
            stack.forward(x, positions, slots, block_tables, *args)

    engine.model.stack = CountingStack()  # type: ignore[assignment]
    engine.add_request("a", prompt, params)
    mixed = 0
    for step in range(200):
        if step in (2, 5):
            engine.add_request(f"b{step}", tok.encode("def add(a, b):\n    return a + b\n" * 6),
                               SamplingParams(max_tokens=4, temperature=0.0))
        before = engine.model.stack_steps
        engine.step()
        mixed += engine.model.stack_steps > before and len(engine.scheduler.running) > 1
        if not engine.has_unfinished():
            break
    assert mixed >= 3  # steps where "a" decoded beside another request
    assert several >= 2  # and steps that decoded several sequences' tokens at once
    assert shared.keys() == alone.keys() and len(alone) == 12
    for pos in alone:
        assert np.array_equal(shared[pos], alone[pos]), pos


def test_a_prompt_gives_the_same_logits_whole_chunked_or_after_a_prefix_cache_hit(smollm2_path: Path) -> None:
    """With int8 activations: the first token's logits of one prompt are bit-identical whether it is
    prefilled in one chunk, in chunks of 7 tokens, or (asked again) as one token after a prefix-cache hit
    on its first two blocks; every one of these steps runs in the Rust stack."""
    from pyagent.inference.sampler import SamplingParams

    g, config, weights = load_gguf_model(smollm2_path)
    tok = gguf_tokenizer(g)
    prompt = tok.encode("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                        "fifteen sixteen seventeen eighteen nineteen twenty, and then a few more words to count to the "
                        "end of the third block")[:33]
    assert len(prompt) == 33  # two full blocks cached, then one token
    seen = []
    for budget in (2048, 7):
        engine = PagedAttentionEngine(config, weights, tok, max_num_seqs=2, block_size=16,
                                      max_num_batched_tokens=budget, activations="int8")
        assert engine.model.stack_prompts
        for rid in ("first", "again"):
            rows = _logits_by_position(engine, rid)
            engine.add_request(rid, prompt, SamplingParams(max_tokens=1, temperature=0.0))
            hits, steps = engine.kv_cache.hits, 0
            while engine.has_unfinished():
                engine.step()
                steps += 1
            assert engine.kv_cache.hits - hits == (2 if rid == "again" else 0)
            assert steps == (1 if rid == "again" or budget > 33 else 5)
            seen.append(rows[len(prompt) - 1])
        assert engine.model.stack_steps == (2 if budget > 33 else 6)
    assert all(np.array_equal(row, seen[0]) for row in seen[1:])


def test_rust_decode_step_on_a_float16_cache_gives_the_python_layers_logits(smollm2_path: Path) -> None:
    """With an fp16 cache the Rust step rounds the K/V it writes as NumPy does (nearest even) and widens what
    it reads exactly, so it follows the NumPy layer loop over the same fp16 cache: the same greedy tokens,
    logits apart only where float rounding put a K/V value on the other side of an fp16 rounding boundary
    (one fp16 step). Measured: 3.5e-3 at most, against 1.8e-2 between the fp16 and the fp32 cache."""
    slow = _decode_logits(smollm2_path, use_stack=False, int8=False, kv_cache_dtype="float16")
    fast = _decode_logits(smollm2_path, use_stack=True, int8=False, kv_cache_dtype="float16")
    exact = _decode_logits(smollm2_path, use_stack=True, int8=False)
    assert fast.keys() == slow.keys() == exact.keys() and len(fast) == 30
    assert all(fast[k].argmax() == slow[k].argmax() for k in fast)
    paths_apart = max(float(np.abs(fast[k] - slow[k]).max()) for k in fast)
    rounding = max(float(np.abs(fast[k] - exact[k]).max()) for k in fast)
    assert paths_apart < 0.5 * rounding, (paths_apart, rounding)
    # against the fp32 cache the logits move by fp16 rounding: visibly, but far less than their spread
    moved = max(float(np.abs(fast[k] - exact[k]).max() / np.ptp(exact[k])) for k in fast)
    assert 1e-5 < moved < 0.01, moved


# -- bad files

def _write_small(path: Path, arch: str = "llama", qtype: T = T.Q8_0, q_cols: int = 32) -> Path:
    """A one-layer model file whose only quantized tensor is ``blk.0.attn_q.weight``."""
    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(64)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 32)).astype(np.float32))
    q = rng.standard_normal((32, q_cols)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", np.asarray(quants.quantize(q, qtype)), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_file_names_the_file_and_what_was_cut(smollm2_path: Path, tmp_path: Path) -> None:
    data = smollm2_path.read_bytes()
    cut = tmp_path / "cut-data.gguf"
    cut.write_bytes(data[:-1000])
    with pytest.raises(ModelLoadError, match=r"cut-data\.gguf: file is truncated: tensor '[a-z_.0-9]+' needs"):
        GGUFFile(cut)
    cut = tmp_path / "cut-header.gguf"
    cut.write_bytes(data[:200_000])  # inside the vocabulary
    with pytest.raises(ModelLoadError, match=r"cut-header\.gguf: file is truncated while reading metadata key "
                                             r"'tokenizer\.ggml\.tokens'"):
        GGUFFile(cut)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.gguf"):
        GGUFFile(empty)


def test_unknown_and_unsupported_quantization_types_name_the_tensor(tmp_path: Path) -> None:
    path = _write_small(tmp_path / "m.gguf")
    raw = bytearray(path.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = raw.index(name) + len(name) + 4 + 2 * 8  # after the name: n_dims (u32), two dims (u64), then the type
    assert struct.unpack_from("<I", raw, at)[0] == int(T.Q8_0)
    struct.pack_into("<I", raw, at, 99)
    bad = tmp_path / "unknown.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"unknown\.gguf: tensor 'blk\.0\.attn_q\.weight' has unknown ggml type 99"):
        GGUFFile(bad)
    no_kernel = _write_small(tmp_path / "nokernel.gguf", qtype=T.Q8_0, q_cols=256)
    raw = bytearray(no_kernel.read_bytes())
    struct.pack_into("<I", raw, at, int(T.Q2_K))  # a real ggml type (smaller than Q8_0) without a kernel here
    no_kernel.write_bytes(bytes(raw))
    g = GGUFFile(no_kernel)
    from pyagent.inference.gguf_loader import _GGUFTensors

    with pytest.raises(ModelLoadError, match=r"nokernel\.gguf: tensor 'blk\.0\.attn_q\.weight' has quantization "
                                             r"type Q2_K, which this engine cannot run"):
        _GGUFTensors(g).matrix("blk.0.attn_q.weight", (32, 256))


def test_unsupported_architecture_names_the_key(tmp_path: Path) -> None:
    path = _write_small(tmp_path / "falcon.gguf", arch="falcon")
    with pytest.raises(ModelLoadError, match=r"falcon\.gguf: architecture 'falcon' \(metadata key "
                                             r"'general\.architecture'\) is not supported"):
        load_gguf_model(path)
    with pytest.raises(ModelLoadError, match=r"falcon\.gguf"):
        PagedAttentionEngine.from_pretrained(path)


def test_missing_metadata_key_is_named(tmp_path: Path) -> None:
    path = _write_small(tmp_path / "m.gguf")
    with pytest.raises(ModelLoadError, match=r"m\.gguf: GGUF metadata lacks the required key 'tokenizer\.ggml\.model'"):
        gguf_tokenizer(GGUFFile(path))
    with pytest.raises(ModelLoadError, match=r"m\.gguf lacks tensor 'blk\.0\.attn_k\.weight'"):
        load_gguf_model(path)

# Quantized kernels vs transformers' float32 matmuls on the dequantized weights differ only by float32
# rounding in another summation order (measured 3.8e-5 over 320 steps; logits are recorded to 1e-6).
LOGIT_TOLERANCE = 1e-3


def _dense(weights: ModelWeights) -> ModelWeights:
    """The same model with every matrix decoded to float32 (the dequantize-then-fp32 reference)."""
    def d(w: Linear) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([p.dequantize() for p in w.parts]).T) \
            if isinstance(w, QuantLinear) else w

    layers = tuple(replace(lw, qkv=d(lw.qkv), o=d(lw.o), gate_up=d(lw.gate_up), down=d(lw.down))
                   for lw in weights.layers)
    embed = weights.embed.dequantize() if isinstance(weights.embed, QuantMatrix) else weights.embed
    return replace(weights, embed=embed, layers=layers, lm_head=d(weights.lm_head))


def _greedy(engine: PagedAttentionEngine, n_tokens: int) -> tuple[list[list[int]], dict[str, list[np.ndarray]]]:
    """Greedy continuations of GREEDY_PROMPTS, and each request's logits row per sampled token."""
    from pyagent.inference.sampler import SamplingParams

    rows: dict[str, list[np.ndarray]] = {}
    engine.logits_observer = lambda rid, pos, row: rows.setdefault(rid, []).append(row.copy())
    for i, prompt in enumerate(GREEDY_PROMPTS):
        ids = engine.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        engine.add_request(str(i), ids, SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True))
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    return [done[str(i)] for i in range(len(GREEDY_PROMPTS))], rows


@pytest.mark.slow
def test_quantized_kernels_give_the_same_greedy_tokens_as_fp32_on_dequantized_weights(smollm2_path: Path) -> None:
    """Float-activation kernels: the same tokens as fp32 on the dequantized weights, all 10 x 32.

    The int8-activation kernels (``activations="int8"``, prompts included) round each
    product's input to 8 bits, as llama.cpp does; a continuation may then leave the fp32 one, but only
    where fp32 itself nearly ties: at the first differing token, the fp32 logit of the int8 choice is
    within 10% of a logit standard deviation of fp32's own choice. (Measured: 4 of the 10 stay identical
    for 32 tokens; the others part at margins of 0.08 to 0.23 with standard deviations of 3.0 to 4.4,
    7.5% at most.)"""
    g, config, weights = load_gguf_model(smollm2_path)
    tok = gguf_tokenizer(g)
    dense, dense_rows = _greedy(PagedAttentionEngine(config, _dense(weights), tok, max_num_seqs=16), 32)
    exact, _ = _greedy(PagedAttentionEngine(config, weights, tok, max_num_seqs=16, activations="float32"), 32)
    int8, _ = _greedy(PagedAttentionEngine(config, weights, tok, max_num_seqs=16, activations="int8"), 32)
    assert all(len(t) == 32 for t in exact + int8)
    assert exact == dense
    for i, (a, b) in enumerate(zip(int8, dense, strict=True)):
        k = next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        if k is not None:
            row = dense_rows[str(i)][k]
            margin = float(row[b[k]] - row[a[k]])
            assert 0 <= margin < 0.1 * float(np.std(row)), (GREEDY_PROMPTS[i], k, margin)


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


@pytest.mark.slow
def test_float16_kv_cache_keeps_the_float32_greedy_tokens_and_doubles_the_blocks(smollm2_path: Path) -> None:
    """``kv_cache_dtype="float16"`` on the real file: the arrays really are float16, the same byte budget
    holds twice the blocks, every decode step still runs in the Rust stack, and greedy output stays the
    float32 cache's for most prompts; where one parts, fp32 itself nearly tied there (the fp16 choice's
    fp32 logit is within 5% of a logit standard deviation). Measured: 9 of the 10 identical for 32
    tokens, the tenth parting at its 11th token."""
    g, config, weights = load_gguf_model(smollm2_path)
    tok = gguf_tokenizer(g)
    budget = 256 << 20  # below what 16 sequences of the full context want, so the budget sets the count
    # float activations, so that only the cache's rounding tells the two apart
    e32 = PagedAttentionEngine(config, weights, tok, max_num_seqs=16, kv_cache_bytes=budget, activations="float32")
    e16 = PagedAttentionEngine(config, weights, tok, max_num_seqs=16, kv_cache_bytes=budget,
                               kv_cache_dtype="float16", activations="float32")
    assert e16.kv_cache.k_cache.dtype == np.float16 and e16.kv_cache.v_cache.dtype == np.float16
    assert e32.kv_cache.k_cache.dtype == np.float32
    assert e16.kv_cache.num_total_blocks == 2 * e32.kv_cache.num_total_blocks == 2 * (budget // (16 * 46080))
    assert e16.kv_cache.nbytes <= budget and e16.kv_cache.bytes_per_token * 2 == e32.kv_cache.bytes_per_token
    exact, rows32 = _greedy(e32, 32)
    half, rows16 = _greedy(e16, 32)
    assert all(len(t) == 32 for t in exact + half)
    # one prefill step, then 31 decode steps: all of them in the Rust stack, with either cache
    assert e16.model.stack_steps == e32.model.stack_steps == 31
    same = sum(a == b for a, b in zip(half, exact, strict=True))
    assert same >= 8, f"only {same} of {len(exact)} continuations kept the float32 cache's tokens"
    shared_rows = []  # logits of positions whose context both runs share
    for i, (a, b) in enumerate(zip(half, exact, strict=True)):
        k = _first_difference(a, b)
        shared_rows += zip(rows16[str(i)][:len(a) if k is None else k + 1], rows32[str(i)], strict=False)
        if k is not None:
            row = rows32[str(i)][k]
            assert 0 <= float(row[b[k]] - row[a[k]]) < 0.05 * float(np.std(row)), (GREEDY_PROMPTS[i], k)
    # the fp16 cache was really read: logits move by its rounding, and only a little
    worst = max(float(np.abs(x - y).max()) for x, y in shared_rows)
    assert 0 < worst < 1.0, worst


def test_greedy_tokens_equal_transformers_on_the_dequantized_weights(smollm2_path: Path) -> None:
    """transformers' greedy tokens and top logits, recorded once (tests/inference/data/
    record_transformers_greedy.py), against the engine on the same file, kernels quantized."""
    import json

    from pyagent.inference.sampler import SamplingParams

    recorded = json.loads((Path(__file__).parent / "data" / "smollm2_transformers_greedy.json").read_text("utf-8"))
    cases = recorded["cases"]
    assert [c["prompt"] for c in cases] == GREEDY_PROMPTS
    g, config, weights = load_gguf_model(smollm2_path)
    # the exact (float-activation) kernels, the default; the int8 ones are held to fp32 by the test above
    engine = PagedAttentionEngine(config, weights, gguf_tokenizer(g), max_num_seqs=16, activations="float32")
    seen: dict[str, list[np.ndarray]] = {}
    engine.logits_observer = lambda rid, pos, row: seen.setdefault(rid, []).append(row.copy())
    for i, case in enumerate(cases):
        ours = engine.tokenizer.encode_chat([{"role": "user", "content": case["prompt"]}])
        assert ours == case["prompt_ids"], case["prompt"]
        # min_tokens masks the end-of-sequence token as transformers' min_new_tokens does
        engine.add_request(str(i), ours, SamplingParams(max_tokens=32, min_tokens=32, temperature=0.0))
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    worst = 0.0
    for i, case in enumerate(cases):
        assert done[str(i)] == case["tokens"], case["prompt"]
        rows = seen[str(i)]
        assert len(rows) == len(case["top"]) == 32
        for row, top in zip(rows, case["top"], strict=True):
            worst = max(worst, float(np.abs(row[top["ids"]] - np.asarray(top["logits"])).max()))
    print(f"max |logit diff| over transformers' top-8 logits of 320 steps: {worst:.2e}")
    assert worst < LOGIT_TOLERANCE


def test_chat_template_ids_equal_transformers_apply_chat_template(smollm2_path: Path) -> None:
    """Ids recorded once from transformers (tests/inference/data/record_chat_template_ids.py)."""
    import json

    recorded = json.loads((Path(__file__).parent / "data" / "smollm2_chat_template_ids.json").read_text("utf-8"))
    tok = gguf_tokenizer(GGUFFile(smollm2_path))
    assert len(recorded["cases"]) == 8
    for case in recorded["cases"]:
        ours = tok.encode_chat(case["messages"], add_generation_prompt=case["add_generation_prompt"])
        assert ours == case["ids"], case["messages"]


SPM_TEXTS = ["The inference engine runs models.", "  two  spaces and\ttabs", "naïve café 東京 😀", "Hello\nworld",
             "<s>a control token inside text</s>"]


def test_sentencepiece_vocabulary_from_gguf(tmp_path: Path) -> None:
    """A ``llama`` (SentencePiece) vocabulary: merges recovered from the scores, ``▁`` spaces, byte
    fallback for characters the vocabulary lacks, BOS added; encodes as the tokenizer it was made from."""
    import json

    from tests.inference.spm_gguf import write_spm_gguf

    reference = write_spm_gguf(tmp_path / "spm.gguf")
    tok = gguf_tokenizer(GGUFFile(tmp_path / "spm.gguf"))
    for text in SPM_TEXTS[:4]:
        ids = tok.encode(text)
        assert ids == [1, *reference.encode(text).ids], text
        assert tok.decode(ids) == reference.decode(ids[1:], skip_special_tokens=False)
    emoji = tok.encode("😀", add_special_tokens=False)
    assert [tok.token_bytes(i) for i in emoji][-4:] == [b"\xf0", b"\x9f", b"\x98", b"\x80"]  # <0xNN> pieces
    assert b"".join(tok.token_bytes(i) for i in tok.encode("Hello world", add_special_tokens=False)) == \
        b" Hello world"  # the ▁ prefix is a space
    assert tok.encode(SPM_TEXTS[4])[:2] == [1, 1]  # control tokens are matched whole
    assert tok.encode_chat([{"role": "user", "content": "Hi"}])[0] == 1 and 2 in tok.eos_token_ids
    recorded = json.loads((Path(__file__).parent / "data" / "spm_transformers_ids.json").read_text("utf-8"))
    assert [tok.encode(t) for t in SPM_TEXTS] == recorded["ids"]  # what transformers' GGUF converter gives


def test_chat_template_that_raises_or_does_not_compile_names_the_file_and_key(tmp_path: Path) -> None:
    from pyagent.inference.chat_template import ChatTemplateError
    from tests.inference.spm_gguf import write_spm_gguf

    write_spm_gguf(tmp_path / "raises.gguf", template="{{ raise_exception('Only user turns, please') }}")
    tok = gguf_tokenizer(GGUFFile(tmp_path / "raises.gguf"))
    with pytest.raises(ChatTemplateError, match=r"raises\.gguf \(metadata key 'tokenizer\.chat_template'\) "
                                                r"raised: Only user turns, please"):
        tok.encode_chat([{"role": "user", "content": "Hi"}])
    write_spm_gguf(tmp_path / "broken.gguf", template="{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match=r"broken\.gguf \(metadata key 'tokenizer\.chat_template'\) "
                                                r"does not compile"):
        gguf_tokenizer(GGUFFile(tmp_path / "broken.gguf"))


def test_decode_step_logit_requests_are_checked(smollm2_path: Path) -> None:
    """The Rust step's logits arguments: rows outside the step and a mis-shaped output are clear errors."""
    g, config, weights = load_gguf_model(smollm2_path)
    engine = PagedAttentionEngine(config, weights, gguf_tokenizer(g), max_num_seqs=1)
    stack, kv = engine.model.stack, engine.kv_cache
    assert stack is not None
    kv.allocate("s", [1], 0, 1)
    x = np.ascontiguousarray(embedding_rows(weights.embed, [1]), dtype=np.float32)
    args = (x, np.array([0]), kv.slot_mapping("s", 0, 1).astype(np.int64),
            np.array([kv.block_table("s")], dtype=np.int32), np.array([1], dtype=np.int32), kv.k_cache, kv.v_cache,
            engine.model.rope.cos, engine.model.rope.sin, engine.model.scale, 512)
    with pytest.raises(ValueError, match=r"logit row 1 is not a token of this step \(0\.\.1\)"):
        stack.forward(*args, np.empty((1, config.vocab_size), np.float32), np.array([1]))
    with pytest.raises(ValueError, match=rf"logits must be a writable contiguous \[len\(logit_rows\), {config.vocab_size}\]"):
        stack.forward(*args, np.empty((1, 7), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="logits and logit_rows go together"):
        stack.forward(*args, np.empty((1, config.vocab_size), np.float32), None)
    logits = np.full((1, config.vocab_size), np.nan, np.float32)
    stack.forward(*args, logits, np.array([0]))
    assert np.isfinite(logits).all() and np.ptp(logits) > 1.0
