"""`gpustack-pulumi estimate`: JSON keys, human output, exit codes and messages for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpustack_pulumi import catalog
from gpustack_pulumi.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpustack_pulumi.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "Qwen/Qwen3-8B", "--gpu", "H100", "--max-model-len", "32768", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "parameters_total",
        "parameters_active",
        "weight_bytes",
        "kv_cache_bytes_per_token",
        "max_model_len",
        "memory",
        "max_kv_tokens",
        "fits",
    ):
        assert key in out
    assert set(out["memory"]) >= {"weights", "activation", "non_torch", "cuda_graphs", "kv_cache"}
    assert out["max_model_len"] == 32768
    assert out["kv_cache_bytes_per_token"] == 144 * 1024
    assert out["fits"] is True
    # The terms add up to the budget the fraction grants.
    memory = out["memory"]
    assert sum(memory[k] for k in ("weights", "activation", "non_torch", "cuda_graphs", "kv_cache")) == memory["budget"]


def test_json_without_gpu_is_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "openai/gpt-oss-120b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "memory" not in out
    assert out["weight_format"] == "mxfp4"
    assert out["kv_cache_bytes_per_token_by_layer_type"] == {"full_attention": 36864, "sliding_window": 36864}


@pytest.mark.parametrize("model", [m.id for m in catalog.tuned_models()])
def test_estimate_runs_on_every_tuned_model(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["estimate", model, "--gpu", "H200", "--tp", "8", "--max-model-len", "8192", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == (0 if out["fits"] else 1)
    assert out["parameters_total"] > 0 and out["memory"]["weights"] > 0


def test_human_output_is_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "Qwen/Qwen3-0.6B", "--gpu", "L4", "--engine", "sglang"]) == 0
    out = capsys.readouterr().out
    assert "sglang 0.5.23 on L4" in out
    assert "kv cache" in out and "fits" in out


def test_does_not_fit_exits_1_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "Qwen/Qwen3-32B", "--gpu", "L4"]) == 1
    assert "exceed the budget" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["estimate", "nobody/nothing"], "Catalog models: Qwen/Qwen3-0.6B"),
        (["estimate", "Qwen/Qwen3-8B", "--gpu", "Z100"], "Valid GPU keys: A100-40GB-SXM"),
        (["estimate", "Qwen/Qwen3-32B", "--tp", "3"], "attention heads (64) must be divisible"),
        (["estimate", "Qwen/Qwen3-8B", "--quantization", "int3"], "valid choices: bf16"),
        (["estimate", "Qwen/Qwen3-8B", "--max-model-len", "1000000"], "exceeds Qwen/Qwen3-8B's maximum"),
        (["estimate", "Qwen/Qwen3-8B", "--engine", "foo"], "invalid choice: 'foo'"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr


def test_tp_error_lists_valid_sizes() -> None:
    result = run_cli("estimate", "Qwen/Qwen3-32B", "--tp", "3")
    assert "Valid: 1, 2, 4, 8, 16, 32, 64" in result.stderr


def test_config_path_and_missing_field(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "vocab_size": 100,
                "intermediate_size": 128,
            }
        )
    )
    result = run_cli("estimate", str(config))
    assert result.returncode == 2
    assert "'num_attention_heads' is required" in result.stderr


def test_show_launch_renders_the_engine_argv(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "estimate",
                "Qwen/Qwen3-32B",
                "--gpu",
                "H100",
                "--tp",
                "2",
                "--max-model-len",
                "8192",
                "--show-launch",
                "--json",
            ]
        )
        == 0
    )
    [spec] = json.loads(capsys.readouterr().out)["launch"]
    assert spec["argv"][:3] == ["vllm", "serve", "Qwen/Qwen3-32B"]
    assert "--tensor-parallel-size" in spec["argv"] and spec["visible_devices"] == [0, 1]
