"""`gpustack-pulumi estimate` (issue 12): labelled numbers, every bad input exit 2 with the field named and no
traceback, the FP8 rule shared with placement, help texts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpustack_pulumi import catalog
from gpustack_pulumi.catalog.capabilities import fp8_problem, supports_fp8
from gpustack_pulumi.cli import main

MISTRAL_7B_V01 = {  # public config.json fields of mistralai/Mistral-7B-v0.1: every layer slides over 4096 tokens
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "torch_dtype": "bfloat16",
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpustack_pulumi.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def estimate_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["estimate", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# ----- item 4: what each number is ------------------------------------------------------------------------


def test_kv_per_token_is_whole_model_and_per_gpu_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    _, tp1 = estimate_json(capsys, "Qwen/Qwen3-8B")
    _, tp2 = estimate_json(capsys, "Qwen/Qwen3-8B", "--tp", "2")
    # Qwen3-8B: 36 layers × 8 KV heads × 128 × (K+V) × 2 bytes = 144 KiB per token, whatever --tp is.
    assert tp1["kv_cache_bytes_per_token"] == tp2["kv_cache_bytes_per_token"] == 144 * 1024
    assert tp1["kv_cache_bytes_per_token_per_gpu"] == 144 * 1024
    assert tp2["kv_cache_bytes_per_token_per_gpu"] == 72 * 1024
    assert tp2["kv_cache_bytes_per_token_by_layer_type_per_gpu"] == {"full_attention": 72 * 1024}
    assert tp2["weights_per_gpu"] < tp2["weight_bytes"]
    for key in ("weight_bytes", "weights_per_gpu", "kv_cache_bytes_per_token", "kv_cache_bytes_per_token_per_gpu"):
        assert key in tp2["scopes"]
    assert "whole model" in tp2["scopes"]["kv_cache_bytes_per_token"]
    assert "per GPU" in tp2["scopes"]["kv_cache_bytes_per_token_per_gpu"]


def test_pp_divides_the_per_gpu_kv(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = estimate_json(capsys, "Qwen/Qwen3-8B", "--tp", "2", "--pp", "4")
    assert out["kv_cache_bytes_per_token_per_gpu"] == 72 * 1024 // 4  # 9 of 36 layers per stage


def test_sliding_window_only_model_never_reports_zero_kv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(MISTRAL_7B_V01))
    _, out = estimate_json(capsys, str(config), "--tp", "2")
    assert out["kv_cache_bytes_per_token"] == 32 * 8 * 128 * 2 * 2 == 128 * 1024
    assert out["kv_cache_bytes_per_token_per_gpu"] == 64 * 1024
    assert out["kv_cache_bytes_per_token_by_layer_type"] == {"sliding_window": 128 * 1024}
    assert out["sliding_window"] == 4096
    assert main(["estimate", str(config)]) == 0
    table = capsys.readouterr().out
    assert "KV cache per token, whole model" in table and "128.0 KiB" in table


def test_table_labels_scopes_and_never_shows_negative_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "Qwen/Qwen3-32B", "--gpu", "L4"]) == 1
    out = capsys.readouterr().out
    assert "weights, whole model" in out and "weights per GPU (TP 1)" in out
    assert "bytes per GPU" in out
    assert "none left (short by" in out
    assert "-" not in out.split("kv cache", 1)[1].split("\n", 1)[0].replace("─", "")


# ----- item 5: bad input --------------------------------------------------------------------------------

BAD_INPUTS = [
    (["Qwen/Qwen3-8B", "--max-model-len", "0"], "--max-model-len must be between 1"),
    (["Qwen/Qwen3-8B", "--max-model-len", "-5"], "--max-model-len must be between 1"),
    (["Qwen/Qwen3-8B", "--max-model-len", "x"], "--max-model-len must be an integer"),
    (["Qwen/Qwen3-8B", "--concurrency", "0"], "--concurrency must be between 1"),
    (["Qwen/Qwen3-8B", "--concurrency", "100000000000000000000"], "--concurrency must be between 1"),
    (["Qwen/Qwen3-8B", "--tp", "0"], "--tp must be between 1"),
    (["Qwen/Qwen3-8B", "--pp", "100"], "--pp 100 exceeds Qwen/Qwen3-8B's 36 layers"),
    (["Qwen/Qwen3-8B", "--pp", "-1"], "--pp must be between 1"),
    (["Qwen/Qwen3-8B", "--gpu-memory-utilization", "nan"], "argument --gpu-memory-utilization"),
    (["Qwen/Qwen3-8B", "--gpu-memory-utilization", "1.5"], "argument --gpu-memory-utilization"),
    (["Qwen/Qwen3-8B", "--gpu-memory-utilization", "-1"], "argument --gpu-memory-utilization"),
    (["./no/such/model"], "'./no/such/model' does not exist"),
    (["missing-config.json"], "'missing-config.json' does not exist"),
    (["Qwen/Qwen3-8B", "--kv-cache-dtype", "int4"], "argument --kv-cache-dtype"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS)
def test_bad_input_exits_2_names_the_field_without_traceback(args: list[str], needle: str) -> None:
    result = run_cli("estimate", *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_binary_and_malformed_model_files_exit_2(tmp_path: Path) -> None:
    binary = tmp_path / "config.json"
    binary.write_bytes(b"\x00\xff\xfe binary")
    result = run_cli("estimate", str(binary))
    assert result.returncode == 2 and str(binary) in result.stderr and "Traceback" not in result.stderr
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    result = run_cli("estimate", str(listing))
    assert result.returncode == 2 and "must be a JSON object" in result.stderr


def test_json_and_markdown_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--inventory", "x.yaml", "--json", "--markdown"]) == 2
    assert "not allowed with argument --json" in capsys.readouterr().err


# ----- item 3: one FP8 rule ---------------------------------------------------------------------------------


def test_fp8_on_a10g_does_not_fit_in_estimate_as_in_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = estimate_json(capsys, "Qwen/Qwen3-8B", "--gpu", "A10G", "--kv-cache-dtype", "fp8", "--max-model-len",
                              "4096")  # fmt: skip
    assert code == 1 and out["fits"] is False
    assert "compute capability ≥ 8.9" in out["problems"][0] and "has 8.6" in out["problems"][0]
    assert out["min_fraction"] is None
    code, out = estimate_json(capsys, "Qwen/Qwen3-8B", "--gpu", "L4", "--quantization", "fp8", "--max-model-len",
                              "4096")  # fmt: skip
    assert code == 0 and out["fits"] is True


def test_plan_and_estimate_apply_the_same_fp8_rule() -> None:
    from placement_helpers import A10G, dep, inventory, node, stub_factory

    from gpustack_pulumi.placement import plan

    result = plan(
        inventory(node("ampere", A10G, 1)),
        [dep("q", model="Qwen/Qwen3-8B", kv_cache_dtype="fp8")],
        demand_factory=stub_factory,
    )
    (unplaced,) = result.unplaced
    expected = fp8_problem(None, "fp8", product="NVIDIA A10G", compute_capability="8.6")
    assert expected is not None and expected in unplaced.reason


@pytest.mark.parametrize("spec", catalog.gpus(), ids=lambda s: s.key)
def test_catalog_fp8_flags_agree_with_the_capability_rule(spec: catalog.GpuSpec) -> None:
    assert supports_fp8(compute_capability=spec.compute_capability, product=spec.names[0]) == spec.fp8
    assert supports_fp8(product=spec.names[0], memory_bytes=spec.memory_bytes) == spec.fp8


# ----- item 9: help texts ---------------------------------------------------------------------------------


def test_help_describes_every_option_and_the_exit_codes() -> None:
    result = run_cli("estimate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "exit codes: 0 fits" in text and "1 does not fit" in text and "2 bad input" in text
    for needle in ("Inference engine whose memory model", "KV cache element type", "Serve the linear weights"):
        assert needle in text
