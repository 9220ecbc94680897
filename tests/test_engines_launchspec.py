"""LaunchSpec -> the agent's LaunchBody: the launchers really run (config files written from env, secret
flags appended in-process and absent from the exec'd command line), and the --show-launch rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpustack_runtime.wire import CapacityDocument, DeviceCapacity, Inventory

from gpustack_pulumi.engines import ConfigFile, LaunchSpec
from gpustack_pulumi.engines.launch import (
    accelerators_from_inventory,
    launch_specs_for_plan,
    render_launch_specs,
    render_plan_launches,
)
from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica, Plan, PlanSummary


def spec(**fields: object) -> LaunchSpec:
    base: dict[str, object] = {
        "engine": "test",
        "engine_version": "1",
        "deployment": "d",
        "replica": 0,
        "node": "n",
        "node_role": "head",
        "node_rank": 0,
        "argv": ["true"],
        "health_path": "/health",
        "metrics_path": None,
        "visible_devices": [0],
    }
    return LaunchSpec(**{**base, **fields})


def agent_env(body_env: dict[str, str], port: int) -> dict[str, str]:
    """What the agent passes: its environment plus the body's, with {port} filled in."""
    return {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in body_env.items()}}


def test_plain_spec_maps_onto_the_launch_body() -> None:
    launch = spec(argv=["vllm", "serve", "m"], env={"A": "1"}, image="img:1", port=0).to_launch_body()
    assert (launch.argv, launch.env, launch.image, launch.health_path) == (
        ["vllm", "serve", "m"],
        {"A": "1"},
        "img:1",
        "/health",
    )
    body = spec(visible_devices=[2, 3], memory_bytes_per_device=5).to_instance_body("stack/d")
    assert body.device_indices == [2, 3] and body.memory_bytes_per_device == 5 and body.owner == "stack/d"


def test_config_files_are_written_from_env_before_exec(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "config.json"
    content = '{"port": {port}, "odd": "quotes \' \\" $HOME `id` %s"}\n'
    body = spec(
        argv=["cat", str(target)], config_files=[ConfigFile(path=str(target), content=content)]
    ).to_launch_body()
    assert body.argv[:2] == ["/bin/sh", "-c"]
    result = subprocess.run(body.argv, env=agent_env(body.env, 40111), capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == content.replace("{port}", "40111")  # byte for byte, nothing expanded
    assert json.loads(target.read_text())["port"] == 40111


def test_secret_flag_is_appended_in_process_and_never_in_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "echo_server.py").write_text(
        "import json, sys\n"
        "cmdline = open('/proc/self/cmdline', 'rb').read().decode().split('\\0')\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cmdline': cmdline}))\n"
    )
    launch = spec(
        argv=[sys.executable, "-m", "echo_server", "--port", "{port}"],
        argv_from_env={"--api-key": "SGLANG_API_KEY"},
    ).to_launch_body()
    env = {**agent_env(launch.env, 40112), "SGLANG_API_KEY": "sk-live-123", "PYTHONPATH": str(tmp_path)}
    argv = [a.replace("{port}", "40112") for a in launch.argv]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["argv"] == ["--port", "40112", "--api-key", "sk-live-123"]
    assert not any("sk-live-123" in part for part in seen["cmdline"])
    assert "sk-live-123" not in json.dumps(launch.model_dump())


def test_secret_flag_launcher_needs_a_python_module_argv() -> None:
    with pytest.raises(ValueError, match="python -m"):
        spec(argv=["server", "--x"], argv_from_env={"--api-key": "K"}).to_launch_body()


def test_worker_without_http_is_ready_while_running() -> None:
    worker = spec(node_role="worker", node_rank=1, health_path=None)
    body = worker.to_launch_body()
    assert body.health_path is None  # the agent treats a running headless worker as ready


def test_render_shows_where_what_why_and_only_secret_references() -> None:
    text = render_launch_specs(
        [
            spec(
                argv=["vllm", "serve", "m", "--speculative-config", '{"method":"mtp"}'],
                secret_env={"VLLM_API_KEY": "pulumi:prod/key"},
                reasons=["performance mode throughput: deployment mode throughput"],
            )
        ]
    )
    assert "d[0] n (head, rank 0) test 1 devices 0" in text
    assert 'argv:    vllm serve m --speculative-config \'{"method":"mtp"}\'' in text
    assert "secret:  VLLM_API_KEY <- pulumi:prod/key" in text
    assert "why:     performance mode throughput" in text


def h100_inventory() -> Inventory:
    return Inventory(
        nodes=[
            CapacityDocument(
                name="a",
                devices=[
                    DeviceCapacity(
                        index=0,
                        uuid="GPU-1",
                        vendor="nvidia",
                        product="NVIDIA H100 80GB HBM3",
                        memory_total=85_520_809_984,
                        memory_used=0,
                        compute_capability="9.0",
                    )
                ],
            ),
            CapacityDocument(name="cpu-box", memory_total=64 * 2**30),
        ]
    )


def test_accelerators_from_inventory_use_the_catalog() -> None:
    inventory = h100_inventory()
    replica = PlacedReplica(
        deployment="d",
        replica=0,
        engine="vllm",
        placements=[
            NodePlacement(node="a", device_indices=[0], memory_bytes_per_device=1),
            NodePlacement(node="cpu-box", device_indices=[], memory_bytes_per_device=1),
        ],
        tensor_parallel_size=1,
        pipeline_parallel_size=2,
        memory_fraction=None,
        reason="t",
    )
    found = accelerators_from_inventory(inventory, replica)
    assert found["a"].key == "H100-SXM" and found["a"].fp8
    assert found["cpu-box"].vendor == "cpu" and found["cpu-box"].memory_bytes == 64 * 2**30


def test_show_launch_for_a_plan_renders_specs_and_refusals_per_replica() -> None:
    def replica(name: str, node: str, devices: list[int]) -> PlacedReplica:
        return PlacedReplica(
            deployment=name,
            replica=0,
            engine="vllm",
            placements=[NodePlacement(node=node, device_indices=devices, memory_bytes_per_device=60 * 2**30)],
            tensor_parallel_size=1,
            pipeline_parallel_size=1,
            memory_fraction=0.8,
            reason="t",
        )

    plan = Plan(
        strategy="binpack",
        replicas=[replica("chat", "a", [0]), replica("cpu", "cpu-box", [])],
        unplaced=[],
        summary=PlanSummary(placed=2, unplaced=0, gpus_used=1, nodes_used=2, kept=0, moved=0, method="heuristic"),
    )
    deployments = [
        Deployment(name="chat", model="Qwen/Qwen3-8B", engine="vllm", max_model_len=4096),
        Deployment(name="cpu", model="Qwen/Qwen3-0.6B", engine="vllm"),
    ]
    launches = launch_specs_for_plan(plan, deployments, h100_inventory())
    assert [len(launch.specs) for launch in launches] == [1, 0]
    assert launches[1].refusal and "CPU-only" in launches[1].refusal
    text = render_plan_launches(launches)
    assert "chat[0] a (head, rank 0) vllm 0.33.0 devices 0" in text and "cpu[0] refused: vllm: placement" in text
