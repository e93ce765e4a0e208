"""``pyagent model init-tiny`` and ``pyagent generate`` as real subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pyagent.inference.engine import PagedAttentionEngine
from pyagent.inference.sampler import SamplingParams


def test_init_tiny_then_generate_json(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    model = tmp_path / "tiny"
    done = subprocess.run([*pyagent_cmd, "model", "init-tiny", str(model), "--seed", "3"], capture_output=True,
                          text=True, env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model / name).is_file()
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(model), "--max-tokens", "9", "--temperature", "0",
                           "--ignore-eos", "--json", "Hello there"], capture_output=True, text=True, env=clean_env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"index", "text", "token_ids", "prompt_token_ids", "finish_reason"}
    assert result["index"] == 0 and result["finish_reason"] == "length"
    assert len(result["token_ids"]) == 9
    # The same request through the Python API gives the same tokens and text.
    engine = PagedAttentionEngine.from_pretrained(model)
    assert result["prompt_token_ids"] == engine.tokenizer.encode("Hello there")
    engine.add_request("x", result["prompt_token_ids"], SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True))
    outs = [o for _ in range(20) for o in engine.step()]
    assert outs[-1].token_ids == result["token_ids"]
    assert outs[-1].text == result["text"]


def test_generate_streams_text(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str],
                               tiny_dir: Path) -> None:
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--max-tokens", "5", "--seed", "1",
                           "The quick"], capture_output=True, text=True, env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    engine.add_request("x", engine.tokenizer.encode("The quick"), SamplingParams(max_tokens=5, seed=1))
    text = "".join(o.text_delta for _ in range(20) for o in engine.step())
    assert done.stdout == text + "\n"


def test_generate_bad_inputs_are_clear_errors(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str],
                                              tiny_dir: Path) -> None:
    cases = [
        (["--model", str(tmp_path / "nope"), "hi"], "does not exist"),
        (["--model", str(tmp_path / "notes.txt"), "hi"], "notes.txt is neither a GGUF file (it lacks the 'GGUF' magic) "
                                                          "nor a Hugging Face checkpoint folder"),
        (["--model", str(tiny_dir), "--top-p", "0", "hi"], "top_p"),
        (["--model", str(tiny_dir), "--max-tokens", "0", "hi"], "max_tokens"),
        (["--model", str(tiny_dir), "x " * 5000], "context holds"),
    ]
    (tmp_path / "notes.txt").write_text("not a model")
    for args, message in cases:
        done = subprocess.run([*pyagent_cmd, "generate", *args], capture_output=True, text=True, env=clean_env,
                              timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    done = subprocess.run([*pyagent_cmd, "model", "init-tiny", str(tmp_path / "full")], capture_output=True,
                          text=True, env=clean_env, timeout=120)
    assert done.returncode == 2 and "not an empty directory" in done.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_generate_with_a_float16_kv_cache(pyagent_cmd: list[str], clean_env: dict[str, str], tiny_dir: Path) -> None:
    args = ["generate", "--model", str(tiny_dir), "--max-tokens", "8", "--temperature", "0", "--ignore-eos", "--json",
            "--kv-cache-dtype", "float16", "--kv-cache-bytes", "8M", "Hello there"]
    done = subprocess.run([*pyagent_cmd, *args], capture_output=True, text=True, env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, max_num_seqs=1, kv_cache_dtype="float16",
                                                  kv_cache_bytes=8 << 20)
    assert engine.kv_cache.k_cache.dtype == np.float16
    ids = engine.tokenizer.encode("Hello there")
    engine.add_request("x", ids, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    outs = [o for _ in range(20) for o in engine.step()]
    assert json.loads(done.stdout)["token_ids"] == outs[-1].token_ids
    for bad, messages in [(["--kv-cache-dtype", "bf16"], ("invalid choice: 'bf16'", "float32", "float16")),
                          (["--kv-cache-bytes", "lots"], ("'lots' is not a size",)),
                          (["--kv-cache-bytes", "0"], ("needs a positive size",))]:
        done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), *bad, "hi"], capture_output=True,
                              text=True, env=clean_env, timeout=120)
        assert done.returncode == 2 and all(m in done.stderr for m in messages), done.stderr
    help_text = subprocess.run([*pyagent_cmd, "generate", "--help"], capture_output=True, text=True, env=clean_env,
                               timeout=120).stdout
    assert "half the cache memory" in " ".join(help_text.split())


def test_engine_refuses_an_unknown_kv_cache_dtype_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown KV cache dtype 'q4': choose one of float32, float16"):
        PagedAttentionEngine.from_pretrained(tmp_path / "not-even-read", kv_cache_dtype="q4")


def test_generate_quantize_q8_0_runs_the_converted_weights(pyagent_cmd: list[str], clean_env: dict[str, str],
                                                           tiny_dir: Path, smollm2_path: Path) -> None:
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--quantize", "q8_0", "--max-tokens",
                           "6", "--temperature", "0", "--ignore-eos", "--json", "Hello there"], capture_output=True,
                          text=True, env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, quantize="q8_0")
    ids = engine.tokenizer.encode("Hello there")
    engine.add_request("x", ids, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    outs = [o for _ in range(20) for o in engine.step()]
    assert json.loads(done.stdout)["token_ids"] == outs[-1].token_ids
    # a GGUF file is quantized already: the option is refused with a reason, not ignored
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(smollm2_path), "--quantize", "q8_0", "hi"],
                          capture_output=True, text=True, env=clean_env, timeout=120)
    assert done.returncode != 0 and "already quantized" in done.stderr


def _engine_run(model: Path, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], list[object]]:
    engine = PagedAttentionEngine.from_pretrained(model)
    engine.add_request("x", prompt_ids, params)
    tokens: list[int] = []
    logprobs: list[object] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens, logprobs = out.token_ids, logprobs + list(out.logprobs)
    return tokens, logprobs


def test_generate_n_completions_with_seeds(pyagent_cmd: list[str], clean_env: dict[str, str],
                                           tiny_dir: Path) -> None:
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--max-tokens", "8", "--seed", "5",
                           "--ignore-eos", "-n", "3", "--json", "Hello there"], capture_output=True, text=True,
                          env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [c["index"] for c in lines] == [0, 1, 2]
    for c in lines:  # completion i is the single request with seed 5 + i
        want, _ = _engine_run(tiny_dir, c["prompt_token_ids"], SamplingParams(max_tokens=8, seed=5 + c["index"],
                                                                              ignore_eos=True))
        assert c["token_ids"] == want
    assert len({tuple(c["token_ids"]) for c in lines}) > 1
    text = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--max-tokens", "4", "--seed", "5",
                           "-n", "2", "Hello there"], capture_output=True, text=True, env=clean_env, timeout=120)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("--- completion 1 of 2 ---\n") and "--- completion 2 of 2 ---\n" in text.stdout


def test_stats_report_the_prompt_and_the_generated_tokens_on_stderr_only(pyagent_cmd: list[str],
                                                                        clean_env: dict[str, str],
                                                                        tiny_dir: Path) -> None:
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--max-tokens", "7", "--seed", "2",
                           "--ignore-eos", "-n", "2", "--json", "--stats", "Hello there"], capture_output=True,
                          text=True, env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # stdout is only the completions
    found = re.fullmatch(r"pyagent generate: model loaded in [0-9.]+ s; prompt: (\d+) tokens in [0-9.]+ s "
                         r"\([0-9.]+ tok/s\); generation: (\d+) tokens in [0-9.]+ s \([0-9.]+ tok/s\)\n", done.stderr)
    assert found, done.stderr
    assert int(found[1]) == len(lines[0]["prompt_token_ids"])
    assert int(found[2]) == sum(len(c["token_ids"]) - 1 for c in lines) == 12  # the tokens after each first one
    chat = subprocess.run([*pyagent_cmd, "chat", "--model", str(tiny_dir), "--max-tokens", "3", "--ignore-eos",
                           "--stats", "Hello"], capture_output=True, text=True, env=clean_env, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert re.fullmatch(r"pyagent chat: model loaded in [0-9.]+ s; prompt: \d+ tokens? in .*; generation: 2 tokens "
                        r"in .*\n", chat.stderr), chat.stderr


def test_generate_logprobs(pyagent_cmd: list[str], clean_env: dict[str, str], tiny_dir: Path) -> None:
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--max-tokens", "6", "--temperature",
                           "0", "--ignore-eos", "--top-logprobs", "3", "--json", "Hello there"], capture_output=True,
                          text=True, env=clean_env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    tokens, logprobs = _engine_run(tiny_dir, result["prompt_token_ids"],
                                   SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=3))
    assert result["token_ids"] == tokens and len(result["logprobs"]) == 6
    for entry, lp, token in zip(result["logprobs"], logprobs, tokens, strict=True):
        assert entry["logprob"] == lp.logprob <= 0  # type: ignore[attr-defined]
        assert len(entry["top_logprobs"]) == 3
        # greedy: the chosen token is the most likely one
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
        assert [t["logprob"] for t in entry["top_logprobs"]] == sorted((t["logprob"] for t in entry["top_logprobs"]),
                                                                       reverse=True)
        assert bytes(entry["bytes"]) == PagedAttentionEngine.from_pretrained(tiny_dir).tokenizer.token_bytes(token)
    text = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), "--max-tokens", "6", "--temperature",
                           "0", "--ignore-eos", "--logprobs", "Hello there"], capture_output=True, text=True,
                          env=clean_env, timeout=120)
    assert text.returncode == 0, text.stderr
    table = text.stdout.split("logprobs:\n", 1)[1].splitlines()
    assert len(table) == 6
    assert [float(line.split()[-1]) for line in table] == pytest.approx([lp.logprob for lp in logprobs],  # type: ignore[attr-defined]
                                                                        abs=1e-4)


@pytest.mark.parametrize(("args", "message"), [(["-n", "0"], "-n must be in 1..16"),
                                               (["-n", "17"], "-n must be in 1..16"),
                                               (["--top-logprobs", "21"], "--top-logprobs must be in 0..20")])
def test_bad_choice_options_are_clear_errors(pyagent_cmd: list[str], clean_env: dict[str, str], tiny_dir: Path,
                                             args: list[str], message: str) -> None:
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(tiny_dir), *args, "hi"], capture_output=True,
                          text=True, env=clean_env, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_chat_n_replies_and_logprobs(pyagent_cmd: list[str], clean_env: dict[str, str], smollm2_path: Path) -> None:
    done = subprocess.run([*pyagent_cmd, "chat", "--model", str(smollm2_path), "--max-tokens", "8", "--seed", "3",
                           "--temperature", "1.0", "-n", "2", "--top-logprobs", "1", "Name a colour."],
                          capture_output=True, text=True, env=clean_env, timeout=300)
    assert done.returncode == 0, done.stderr
    parts = done.stdout.split("--- completion ")
    assert parts[0] == "" and [p.split(" ---", 1)[0] for p in parts[1:]] == ["1 of 2", "2 of 2"]
    for part in parts[1:]:
        rows = part.split("logprobs:\n", 1)[1].splitlines()
        assert 1 <= len(rows) <= 8 and all("top: " in row for row in rows)
    # a conversation continues one reply: -n above 1 needs a one-shot MESSAGE
    done = subprocess.run([*pyagent_cmd, "chat", "--model", str(smollm2_path), "-n", "2"], input="hi\n",
                          capture_output=True, text=True, env=clean_env, timeout=120)
    assert done.returncode == 2 and "needs a MESSAGE" in done.stderr


def test_activations_flag_picks_the_decode_kernels(pyagent_cmd: list[str], clean_env: dict[str, str],
                                                   smollm2_path: Path) -> None:
    """``--activations int8`` gives the tokens of the engine built with int8 kernels, the default those of
    the float one; a bad value is a usage error naming the choices."""
    prompt = "The capital of France is"
    for flag, activations in (["--activations", "int8"], "int8"), ([], "float32"):
        done = subprocess.run([*pyagent_cmd, "generate", "--model", str(smollm2_path), *flag, "--max-tokens", "24",
                               "--temperature", "0", "--ignore-eos", "--json", prompt],
                              capture_output=True, text=True, env=clean_env, timeout=300)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        engine = PagedAttentionEngine.from_pretrained(smollm2_path, activations=activations)
        assert engine.model.stack is not None and engine.model.int8 == ("auto" if activations == "int8" else None)
        engine.add_request("x", result["prompt_token_ids"], SamplingParams(max_tokens=24, temperature=0.0,
                                                                           ignore_eos=True))
        outs = [o for _ in range(60) for o in engine.step()]
        assert outs[-1].token_ids == result["token_ids"], flag
    done = subprocess.run([*pyagent_cmd, "generate", "--model", str(smollm2_path), "--activations", "int4", "hi"],
                          capture_output=True, text=True, env=clean_env, timeout=120)
    assert done.returncode == 2 and "choose from 'float32', 'int8'" in done.stderr, done.stderr
