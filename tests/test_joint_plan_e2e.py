"""One plan per cluster, end to end through the engine harness on real agents with fake GPUs.

Two local agents (n1, n2), each with two fake 6 GiB GPUs (the real NVML code path through the fake
libnvidia-ml.so.1), and three multi-replica llama.cpp deployments (2 GiB per replica on a GPU, so a GPU takes two):
- what ``pulumi up`` creates equals what the harness's ``preview`` showed and what ``gpustack-pulumi preview``
  printed from the agents, replica for replica;
- no device is claimed over its memory, no 409 from the stack's own replicas (placed one at a time against the
  same capacity, all seven would have chosen the same GPU), and replicas of one deployment are on distinct GPUs;
- a higher-priority deployment added later takes the room as the CLI says it would: the lowest-priority replica
  that no longer fits is stopped and left pending (with its reason), and ``up`` does exactly what the CLI shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from harness.pulumi_engine import StackHarness
from llama_support import requires_llama_cpp

REPO = Path(__file__).resolve().parents[1]
STACK_DIR = REPO / "tests" / "stacks" / "joint"
RUNTIME_TESTS = REPO / "runtime" / "tests"
GIB = 2**30

pytestmark = pytest.mark.slow


def _fake_nvml(tmp: Path) -> dict[str, str]:
    sys.path.insert(0, str(RUNTIME_TESTS))
    try:
        from fakenvml import fake_gpu
        from fakenvml.build import build_fake_nvml
    finally:
        sys.path.remove(str(RUNTIME_TESTS))
    library = build_fake_nvml(tmp / "fakenvml")
    gpus = [fake_gpu(i, name="NVIDIA L4", memory_total=6 * GIB, cc_major=8, cc_minor=9) for i in range(2)]
    config = tmp / "fake-nvml.json"
    config.write_text(json.dumps({"driver_version": "550.54.15", "devices": gpus}))
    ld_path = ":".join(p for p in (str(library.parent), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return {"FAKE_NVML_CONFIG": str(config), "LD_LIBRARY_PATH": ld_path}


def run_stack() -> None:
    import runpy

    runpy.run_path(str(STACK_DIR / "__main__.py"), run_name="__main__")


def devices_of(placements: list[dict]) -> list[list[str]]:
    return [
        [f"{p['node']}:{int(i)}" for p in placement["placements"] for i in p["device_indices"]]
        for placement in placements
    ]


def cli_preview(config: dict[str, str], agents: dict[str, str], token: str, env: dict[str, str], *extra: str):
    argv = [sys.executable, "-m", "gpustack_pulumi.cli", "preview", str(STACK_DIR), "--stack", "joint", "--json"]
    argv += [arg for key, value in config.items() for arg in ("--config", f"{key}={value}")]
    argv += [arg for node, url in sorted(agents.items()) for arg in ("--agent", f"{node}={url}")]
    result = subprocess.run(
        [*argv, *extra], cwd=REPO, env={**os.environ, **env, "GPUSTACK_AGENT_TOKEN": token},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stdout


def by_replica(report: dict) -> dict[tuple[str, int], list[str]]:
    return {(r["deployment"], r["replica"]): r["devices"] for r in report["replicas"]}


def from_outputs(outputs: dict, names: list[str]) -> dict[tuple[str, int], list[str]]:
    found = {}
    for name in names:
        for index, devices in enumerate(devices_of(outputs[f"{name}_placements"])):
            found[(name, index)] = devices
    return found


@requires_llama_cpp
def test_up_creates_the_joint_plan_the_previews_show(tmp_path: Path) -> None:
    from gpustack_pulumi.tinymodel import write_tiny_gguf

    env = _fake_nvml(tmp_path)
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    config = {"gpustack:stateDir": str(tmp_path / "state"), "gpustack:model": str(model), "gpustack:deploy": "0"}
    harness = StackHarness(
        run_stack, state_path=tmp_path / "state.json", config=config, cwd=REPO, stack="joint", env=env
    )
    try:
        agents_up = harness.up()  # the agents first, so every preview below reads the same live capacity
        agents, token = agents_up.outputs["agents"], agents_up.outputs["token"]
        assert sorted(agents) == ["n1", "n2"]
        names = ["chat", "small", "tools"]

        harness.config["gpustack:deploy"] = "1"
        stack_config = {"gpustack:model": str(model), "gpustack:stateDir": config["gpustack:stateDir"]}
        cli_report, cli_json = cli_preview({**stack_config, "gpustack:deploy": "1"}, agents, token, env)
        preview = harness.preview()
        up = harness.up()
        previewed, created = from_outputs(preview.outputs, names), from_outputs(up.outputs, names)
        assert created == previewed == by_replica(cli_report)  # replica for replica
        assert len(created) == 7

        # Replicas of one deployment on distinct GPUs (room allows: 4 GPUs).
        for name in names:
            devices = [created[(name, i)][0] for i in range(3 if name == "chat" else 2)]
            assert len(set(devices)) == len(devices), (name, devices)
        # Every GPU takes two at most, and the agents agree: nothing over its memory, every engine serving.
        assert max(Counter(d for devices in created.values() for d in devices).values()) <= 2
        for node, url in agents.items():
            capacity = httpx.get(f"{url}/v1/capacity", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            for device in capacity.json()["devices"]:
                assert device["memory_allocated"] <= device["memory_total"], (node, device)
        states = {r.name: r.outputs for r in harness.load_state() if r.type.endswith("ModelReplica")}
        assert {outs["state"] for outs in states.values()} == {"ready"}

        # A higher-priority deployment that needs room the others hold: the CLI (sticky to the last report)
        # and `up` agree; the lowest-priority replica that no longer fits waits, pending, with its reason.
        previous = tmp_path / "report.json"
        previous.write_text(cli_json)
        harness.config["gpustack:deploy"] = "2"
        cli_after, _ = cli_preview(
            {**stack_config, "gpustack:deploy": "2"}, agents, token, env, "--previous", str(previous)
        )
        after = harness.up()
        placed_after, pending = {}, []
        for name in [*names, "vip"]:
            for index, placement in enumerate(after.outputs[f"{name}_placements"]):
                if placement.get("status") == "pending":
                    pending.append(((name, index), placement["reason"]))
                else:
                    placed_after[(name, index)] = devices_of([placement])[0]
        assert placed_after == by_replica(cli_after)  # up does what the CLI showed, replica for replica
        assert [key for key, _ in pending] == [(u["deployment"], u["replica"]) for u in cli_after["unplaced"]]
        assert len(pending) == 1 and pending[0][0][0] == "tools" and "higher-priority" in pending[0][1]
        assert len({devices[0] for key, devices in placed_after.items() if key[0] == "vip"}) == 2  # two GPUs
        # Only the lowest priority waits: every replica of chat and small is still placed (one may have moved to
        # where a tools replica was).
        assert {k for k in created if k[0] in ("chat", "small")} <= set(placed_after)
        states = {r.name: r.outputs for r in harness.load_state() if r.type.endswith("ModelReplica")}
        assert Counter(outs["state"] for outs in states.values()) == Counter({"ready": 8, "pending": 1})
    finally:
        harness.destroy()
