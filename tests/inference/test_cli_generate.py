"""``pyagent model init-tiny`` and ``pyagent generate`` as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
    assert set(result) == {"text", "token_ids", "prompt_token_ids"}
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
        (["--model", str(tiny_dir), "--top-p", "0", "hi"], "top_p"),
        (["--model", str(tiny_dir), "--max-tokens", "0", "hi"], "max_tokens"),
        (["--model", str(tiny_dir), "x " * 5000], "context holds"),
    ]
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
