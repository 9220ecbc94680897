"""``gpustack-pulumi plan`` (issue 12, items 5 and 6): JSON read as JSON, YAML with the C loader, bounded counts
and sizes, every bad input exit 2 with the file and the field named, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpustack_pulumi.cli import main
from gpustack_pulumi.placement import cli_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEVICE = {
    "index": 0,
    "uuid": "GPU-0",
    "vendor": "nvidia",
    "product": "NVIDIA H100 80GB HBM3",
    "memory_total": 85520809984,
    "memory_used": 536870912,
    "compute_capability": "9.0",
}
DEPLOYMENT = {"name": "chat", "model": "Qwen/Qwen3-8B", "replicas": 2, "max_model_len": 8192}


def _inventory(tmp_path: Path, name: str = "inventory.json", **device: object) -> Path:
    path = tmp_path / name
    devices = [{**DEVICE, **device}, {**DEVICE, "index": 1, "uuid": "GPU-1"}]
    path.write_text(json.dumps({"nodes": [{"name": "n1", "devices": devices}]}))
    return path


def _deployments(tmp_path: Path, *items: dict, name: str = "deployments.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(list(items) or [DEPLOYMENT]))
    return path


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_files_are_read_with_json_not_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    class NoYaml:
        def __init__(self, *args: object) -> None:
            raise AssertionError("a JSON file went through PyYAML")

    monkeypatch.setattr(cli_plan, "_YAML_LOADER", NoYaml)
    code, out, err = _plan(capsys, "--inventory", str(_inventory(tmp_path)), "--deployments",
                           str(_deployments(tmp_path)), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["summary"]["placed"] == 2


def test_yaml_uses_the_c_loader_and_gives_the_same_plan(tmp_path: Path, capsys) -> None:
    assert cli_plan._YAML_LOADER is yaml.CSafeLoader
    inventory_yaml = tmp_path / "inventory.yaml"
    inventory_yaml.write_text(yaml.safe_dump(json.loads(_inventory(tmp_path).read_text())))
    deployments_yaml = tmp_path / "deployments.yaml"
    deployments_yaml.write_text(yaml.safe_dump([DEPLOYMENT]))
    _, from_yaml, _ = _plan(
        capsys, "--inventory", str(inventory_yaml), "--deployments", str(deployments_yaml), "--json"
    )
    _, from_json, _ = _plan(capsys, "--inventory", str(_inventory(tmp_path)), "--deployments",
                            str(_deployments(tmp_path)), "--json")  # fmt: skip
    assert from_yaml == from_json


def test_example_yaml_files_still_plan(capsys) -> None:
    code, _, err = _plan(capsys, "--inventory", str(EXAMPLES / "inventory.yaml"), "--deployments",
                         str(EXAMPLES / "deployments.yaml"), "--json")  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    ("device", "field"),
    [
        ({"memory_total": 1e30}, "nodes.0.devices.0.memory_total"),
        ({"memory_total": 10**30}, "nodes.0.devices.0.memory_total"),
        ({"memory_total": -1}, "nodes.0.devices.0.memory_total"),
        ({"memory_used": 2**45}, "nodes.0.devices.0.memory_used"),
        ({"index": 10**9}, "nodes.0.devices.0.index"),
    ],
)
def test_device_sizes_are_bounded(tmp_path: Path, capsys, device: dict, field: str) -> None:
    code, _, err = _plan(capsys, "--inventory", str(_inventory(tmp_path, **device)), "--deployments",
                         str(_deployments(tmp_path)))  # fmt: skip
    assert code == 2
    assert "inventory.json" in err and f"field '{field}'" in err


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        ({"replicas": 10**20}, "0.replicas", "between 0 and 10,000"),
        ({"replicas": -1}, "0.replicas", "between 0 and 10,000"),
        ({"replicas": 1.5}, "0.replicas", "must be an integer"),
        ({"concurrency": 0}, "0.concurrency", "between 1"),
        ({"max_model_len": 0}, "0.max_model_len", "between 1"),
        ({"priority": 10**30}, "0.priority", "between -1,000,000"),
    ],
)
def test_deployment_counts_are_bounded(tmp_path: Path, capsys, change: dict, field: str, needle: str) -> None:
    code, _, err = _plan(capsys, "--inventory", str(_inventory(tmp_path)), "--deployments",
                         str(_deployments(tmp_path, {**DEPLOYMENT, **change})))  # fmt: skip
    assert code == 2
    assert "deployments.json" in err and f"field '{field}'" in err and needle in err


def test_total_replicas_are_bounded(tmp_path: Path, capsys) -> None:
    items = [{**DEPLOYMENT, "name": f"d{i}", "replicas": 10_000} for i in range(101)]
    code, _, err = _plan(capsys, "--inventory", str(_inventory(tmp_path)), "--deployments",
                         str(_deployments(tmp_path, *items)))  # fmt: skip
    assert code == 2 and "1,010,000 replicas in all; at most 1,000,000" in err


def test_binary_and_missing_files_name_the_file(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "inventory.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    code, _, err = _plan(capsys, "--inventory", str(binary), "--deployments", str(_deployments(tmp_path)))
    assert code == 2 and str(binary) in err and "not a text file" in err
    missing = tmp_path / "nope.yaml"
    code, _, err = _plan(capsys, "--inventory", str(missing), "--deployments", str(_deployments(tmp_path)))
    assert code == 2 and str(missing) in err and "cannot read" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"nodes": [')
    code, _, err = _plan(capsys, "--inventory", str(broken), "--deployments", str(_deployments(tmp_path)))
    assert code == 2 and str(broken) in err and "not valid JSON" in err


@pytest.mark.parametrize("budget", ["-1", "0", "nan", "inf", "1e9", "soon"])
def test_time_budget_must_be_a_positive_finite_number(tmp_path: Path, budget: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpustack_pulumi.cli", "plan", "--inventory", str(_inventory(tmp_path)),
         "--deployments", str(_deployments(tmp_path)), "--time-budget", budget],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "argument --time-budget" in result.stderr and "Traceback" not in result.stderr


def test_plan_help_describes_strategy_and_exit_codes() -> None:
    result = subprocess.run([sys.executable, "-m", "gpustack_pulumi.cli", "plan", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    text = " ".join(result.stdout.split())
    assert "binpack: fill used GPUs" in text and "exit codes: 0 every replica placed" in text
