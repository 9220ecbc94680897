"""``gpustack-pulumi plan`` on the example files, JSON output, previous plans and bad files (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpustack_pulumi.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
INVENTORY = EXAMPLES / "inventory.yaml"
DEPLOYMENTS = EXAMPLES / "deployments.yaml"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_example_plan_prints_a_table_by_node_and_gpu(capsys):
    code, out, _ = _run(capsys, "--inventory", str(INVENTORY), "--deployments", str(DEPLOYMENTS))
    assert code == 0
    assert "Placement by node and GPU" in out
    for name in ("h100-node-1", "l40s-node-1", "cpu-node-1", "gpt-oss-120b", "tiny-llamacpp#0"):
        assert name in out
    assert "0 unplaced" in out


def test_example_plan_json_is_byte_identical_and_places_everything(capsys, tmp_path):
    code, first, _ = _run(capsys, "--inventory", str(INVENTORY), "--deployments", str(DEPLOYMENTS), "--json")
    assert code == 0
    _, second, _ = _run(capsys, "--inventory", str(INVENTORY), "--deployments", str(DEPLOYMENTS), "--json")
    assert first == second
    data = json.loads(first)
    wanted = sum(d["replicas"] for d in yaml.safe_load(DEPLOYMENTS.read_text()))
    assert data["summary"]["placed"] == wanted
    by_name = {(r["deployment"], r["replica"]): r for r in data["replicas"]}
    # FP8 cannot run on the A10G (compute capability 8.6): the gpu_selector leaves the L40S
    assert by_name[("qwen3-8b-fp8", 0)]["placements"][0]["node"] == "l40s-node-1"
    assert by_name[("tiny-llamacpp", 0)]["placements"][0] == {
        "node": "cpu-node-1",
        "device_indices": [],
        "memory_bytes_per_device": by_name[("tiny-llamacpp", 0)]["placements"][0]["memory_bytes_per_device"],
    }
    # the previous plan keeps everything in place
    previous = tmp_path / "previous.json"
    previous.write_text(first)
    code, again, _ = _run(
        capsys, "--inventory", str(INVENTORY), "--deployments", str(DEPLOYMENTS), "--json", "--previous", str(previous)
    )
    assert code == 0
    again_data = json.loads(again)
    assert again_data["replicas"] == data["replicas"]
    assert again_data["summary"]["kept"] == wanted


def test_unplaced_replicas_exit_1_with_reasons(capsys, tmp_path):
    deployments = tmp_path / "d.yaml"
    deployments.write_text(
        yaml.safe_dump([{"name": "huge", "model": "deepseek-ai/DeepSeek-R1", "max_model_len": 8192}])
    )
    code, out, _ = _run(capsys, "--inventory", str(INVENTORY), "--deployments", str(deployments))
    assert code == 1
    assert "Unplaced replicas" in out and "huge" in out


@pytest.mark.parametrize(
    ("which", "content", "expected"),
    [
        ("deployments", [{"name": "x", "model": "Qwen/Qwen3-8B", "replicas": -1}], "field '0.replicas'"),
        ("deployments", [{"name": "x", "model": "Qwen/Qwen3-8B", "engin": "vllm"}], "field '0.engin'"),
        ("deployments", [{"name": "x", "model": "Qwen/Qwen3-8B", "engine": "vlm"}], "unknown engine 'vlm'"),
        ("deployments", {"not": "a list"}, "expected a list of deployments"),
        ("inventory", {"nodes": [{"name": "n", "devices": [{"index": 0}]}]}, "field 'nodes.0.devices.0.uuid'"),
        ("inventory", "::: not yaml :::\n  - [", "not valid YAML/JSON"),
    ],
)
def test_bad_files_exit_2_naming_path_and_field(capsys, tmp_path, which, content, expected):
    bad = tmp_path / f"{which}.yaml"
    bad.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    inventory = bad if which == "inventory" else INVENTORY
    deployments = bad if which == "deployments" else DEPLOYMENTS
    code, _, err = _run(capsys, "--inventory", str(inventory), "--deployments", str(deployments))
    assert code == 2
    assert str(bad) in err
    assert expected in err


def test_missing_file_exits_2(capsys, tmp_path):
    code, _, err = _run(capsys, "--inventory", str(tmp_path / "nope.yaml"), "--deployments", str(DEPLOYMENTS))
    assert code == 2
    assert "nope.yaml: cannot read" in err


def test_show_launch_prints_each_replicas_launch_spec(capsys):
    code, out, _ = _run(capsys, "--inventory", str(INVENTORY), "--deployments", str(DEPLOYMENTS), "--show-launch")
    assert code == 0
    assert "Launch specs" in out
    assert "vllm serve Qwen/Qwen3-32B" in out and "--tensor-parallel-size 2" in out
    assert "-m llama_cpp.server --model examples/models/tiny-llama.gguf" in out
    code, doc, _ = _run(
        capsys, "--inventory", str(INVENTORY), "--deployments", str(DEPLOYMENTS), "--show-launch", "--json"
    )
    launches = json.loads(doc)["launches"]
    assert {(x["deployment"], x["replica"]) for x in launches} == {
        (r["deployment"], r["replica"]) for r in json.loads(doc)["plan"]["replicas"]
    }
    assert all(x["refusal"] is None for x in launches)
