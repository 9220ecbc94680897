"""`gpustack-pulumi preview`: a stack program under mocks, placed on an inventory; deterministic report and diff."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpustack_pulumi.preview import collect_deployments

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "examples" / "inventory.yaml"


def preview(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpustack_pulumi.cli", "preview", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def test_collects_the_stack_deployments_without_creating_anything(tmp_path: Path) -> None:
    config = {"gpustack:stateDir": str(tmp_path), "gpustack:replicas": "3", "gpustack:model": "Qwen/Qwen3-8B"}
    [chat] = collect_deployments(REPO / "stacks" / "local", stack="ci", config=config)
    assert chat.name == "chat" and chat.replicas == 3 and chat.model == "Qwen/Qwen3-8B"
    assert not (tmp_path / "agent").exists()  # no agent was started


def test_report_is_deterministic_and_diffs_against_the_previous(tmp_path: Path) -> None:
    common = [
        "stacks/local",
        "--inventory",
        str(INVENTORY),
        "--config",
        f"gpustack:stateDir={tmp_path}",
        "--config",
        "gpustack:model=Qwen/Qwen3-8B",
    ]
    first = preview(*common, "--config", "gpustack:replicas=2", "--json")
    second = preview(*common, "--config", "gpustack:replicas=2", "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # byte-identical
    report = json.loads(first.stdout)
    assert [(r["deployment"], r["replica"]) for r in report["replicas"]] == [("chat", 0), ("chat", 1)]
    assert all(r["engine"] == "vllm" and r["memory_fraction"] for r in report["replicas"])
    previous = tmp_path / "previous.json"
    previous.write_text(first.stdout)

    grown = preview(*common, "--config", "gpustack:replicas=3", "--previous", str(previous), "--markdown")
    assert grown.returncode == 0, grown.stderr
    assert "| chat | 2 | vllm |" in grown.stdout
    assert "- added chat#2 on" in grown.stdout
    assert "moved" not in grown.stdout  # sticky: the first two stay where they were

    same = preview(*common, "--config", "gpustack:replicas=2", "--previous", str(previous))
    assert "changes: none" in same.stdout


def test_unplaceable_replica_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = preview(
        "stacks/local",
        "--inventory",
        str(INVENTORY),
        "--config",
        f"gpustack:stateDir={tmp_path}",
        "--config",
        "gpustack:model=deepseek-ai/DeepSeek-R1",
        "--markdown",
    )
    assert result.returncode == 1
    assert "**Not placed**" in result.stdout and "GiB" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stacks/nowhere", "--inventory", "examples/inventory.yaml"], "no __main__.py"),
        (["stacks/local", "--inventory", "missing.yaml"], "missing.yaml"),
        (["stacks/local", "--inventory", "examples/inventory.yaml", "--config", "nokey"], "expected KEY=VALUE"),
        (["stacks/local", "--agent", "n=http://127.0.0.1:1"], "GPUSTACK_AGENT_TOKEN"),
    ],
)
def test_bad_input_exits_2(args: list[str], needle: str) -> None:
    result = preview(*args)
    assert result.returncode == 2
    assert needle in result.stderr


def test_local_stack_replicas_zero_means_zero(tmp_path: Path) -> None:
    from gpustack_pulumi.preview import collect_deployments

    config = {"gpustack:replicas": "0", "gpustack:stateDir": str(tmp_path)}
    (deployment,) = collect_deployments(REPO / "stacks" / "local", stack="local", config=config)
    assert deployment.name == "chat" and deployment.replicas == 0


def test_planned_capacity_previews_before_any_agent_exists(tmp_path: Path) -> None:
    def preview(stack: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gpustack_pulumi.cli", "preview", f"stacks/{stack}", "--stack",
                               stack, "--planned", "--json", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    state = f"gpustack:stateDir={tmp_path}"
    placed = preview("local", "--config", state)
    assert placed.returncode == 0, placed.stderr
    (replica,) = json.loads(placed.stdout)["replicas"]
    assert replica["deployment"] == "chat" and replica["engine"] in ("llama.cpp", "vllm", "sglang")
    # What the first `pulumi preview` says: a misfit fails with the numbers.
    misfit = preview("local", "--config", state, "--config", "gpustack:concurrency=1000000")
    assert misfit.returncode == 1
    assert "chat replica 0 cannot be placed" in json.loads(misfit.stdout)["failures"][0]
    # SSH hosts cannot tell their capacity before their agents run.
    ssh = preview("onprem", "--config-file", "stacks/onprem/Pulumi.onprem.example.yaml", "--config",
                  "gpustack:sshPrivateKey=unused")  # fmt: skip
    assert ssh.returncode == 2 and "--planned: a pool of this stack cannot tell" in ssh.stderr
