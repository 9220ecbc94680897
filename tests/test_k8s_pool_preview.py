"""The `kubernetes` example stack: an SSH pool and a Kubernetes pool in one cluster, placed together by one plan.
`gpustack-pulumi preview` on an inventory file gives the committed report, and the Kubernetes objects the pool
renders for that plan (the replicas on its nodes) pass strict validation.

Regenerate after an intended change with: UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_k8s_pool_preview.py
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from golden_support import check_golden, run_preview
from test_k8s_pool_render import VERSIONS

from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.placement.cli_plan import load_inventory
from gpustack_pulumi.pools.kubernetes import render
from gpustack_pulumi.pools.kubernetes.component import pool_settings
from gpustack_pulumi.preview import _config_file, collect_plan_inputs

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
STACK = REPO / "stacks" / "kubernetes"
CONFIG = STACK / "Pulumi.kubernetes.example.yaml"
INVENTORY = REPO / "examples" / "kubernetes-inventory.yaml"
COMMON = [
    "stacks/kubernetes",
    "--stack",
    "kubernetes",
    "--inventory",
    "examples/kubernetes-inventory.yaml",
    "--config-file",
    "stacks/kubernetes/Pulumi.kubernetes.example.yaml",
    "--config",
    "gpustack:sshPrivateKey=not-used-by-preview",
]


def preview(*args: str) -> str:
    return run_preview(*COMMON, *args)


def test_one_plan_places_on_both_pools_and_matches_the_golden_report() -> None:
    report = json.loads(preview("--json"))
    check_golden("kubernetes-preview.md", preview("--markdown"))
    nodes = {node for replica in report["replicas"] for node in replica["nodes"]}
    assert {"gpu-a"} < nodes and nodes & {"gpu-node-1", "gpu-node-2"}, nodes
    by_deployment = {r["deployment"]: r["nodes"] for r in report["replicas"]}
    assert all(node.startswith("gpu-node-") for node in by_deployment["reasoning"])  # node_selector: runner
    assert by_deployment["small"] == ["gpu-a"]  # node_selector: rack r1
    assert not report["unplaced"] and not report["failures"]


@pytest.fixture(scope="module")
def workloads() -> list[dict]:
    """The pool's objects for the preview's plan: the example's pool arguments, the stack's deployments on the
    inventory, placed by plan_cluster as the ClusterPlan resource does."""
    config = {**_config_file(CONFIG), "gpustack:sshPrivateKey": "unused"}
    inputs = collect_plan_inputs(STACK, stack="kubernetes", config=config)
    inventory = load_inventory(INVENTORY)
    addresses = {node.name: node.name for node in inventory.nodes}
    result = plan_cluster(inventory, inputs.deployments, owner_prefix=inputs.owner_prefix, node_addresses=addresses)
    assert result.ok, result.failures
    stack_config = yaml.safe_load(CONFIG.read_text())["config"]
    settings, nodes = pool_settings(
        "k8s",
        {
            "nodes": stack_config["gpustack:k8sNodes"],
            "agent_token": "t",
            "agent_image": stack_config["gpustack:agentImage"],
        },
    )
    return [
        *render.render_agent_objects(settings, nodes),
        *render.render_workloads(settings, result.model_dump(mode="json"), nodes),
    ]


def test_the_kubernetes_pool_renders_only_its_replicas(workloads: list[dict]) -> None:
    engines = sorted(o["metadata"]["name"] for o in workloads if o["kind"] == "Deployment")
    pinned = {o["metadata"]["name"]: o["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
        for o in workloads if o["kind"] == "Deployment"}  # fmt: skip
    assert engines == ["chat-r1", "chat-r2", "reasoning-r0"], engines
    assert all(nodes[0].startswith("gpu-node-") for nodes in pinned.values())
    services = sorted(o["metadata"]["name"] for o in workloads if o["kind"] == "Service")
    assert services == ["chat", "k8s-agent", "reasoning"]


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_the_example_objects_are_valid_in_strict_mode(workloads: list[dict], version: str) -> None:
    for obj in workloads:
        kubernetes_validate.validate(obj, version, strict=True)
