"""KubernetesGpuPool's pure renderers: every object validated with kubernetes-validate in strict mode against each
supported Kubernetes minor version, on plans made by the product's own planner from the pool's planned capacity
(single-node replicas sharing GPUs, whole GPUs, a multi-node replica, Ascend, MIG)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from gpustack_runtime.wire import CapacityDocument, Inventory
from k8s_sample_cluster import DEPLOYMENTS, NODES, SETTINGS, plan_on_pool

from gpustack_pulumi.catalog import gpu
from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.placement.models import Deployment
from gpustack_pulumi.pools.kubernetes import render
from gpustack_pulumi.pools.kubernetes.render import KubernetesNode, PoolSettings, RenderError

FIRST_SUPPORTED_MINOR = 29


def supported_versions() -> list[str]:
    """Every Kubernetes minor the installed kubernetes-validate ships strict schemas for, from 1.29 on."""
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    minors = sorted(
        int(match.group(1))
        for entry in schemas.iterdir()
        if (match := re.fullmatch(r"v1\.(\d+)\.0-local-strict", entry.name))
    )
    versions = [f"1.{minor}.0" for minor in minors if minor >= FIRST_SUPPORTED_MINOR]
    assert versions and versions[0] == "1.29.0", versions
    return versions


VERSIONS = supported_versions()


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    """The cluster plan (as the ClusterPlan resource outputs it) of DEPLOYMENTS on the pool's planned capacity."""
    return plan_on_pool("k8s", NODES, DEPLOYMENTS)


@pytest.fixture(scope="module")
def objects(plan: dict[str, Any]) -> list[dict[str, Any]]:
    secret = render.render_secret(SETTINGS, {"token": "t0ken", "api-key": "k3y"})
    return [*render.render_agent_objects(SETTINGS, NODES), secret, *render.render_workloads(SETTINGS, plan, NODES)]


def by_kind_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def engine(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


# ----- strict validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_in_strict_mode(objects: list[dict[str, Any]], version: str) -> None:
    kinds = {o["kind"] for o in objects}
    assert kinds >= {"Namespace", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
                     "Service", "Secret", "Deployment", "StatefulSet", "PodDisruptionBudget"}  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_device_plugin_assignment_is_valid_in_strict_mode(version: str) -> None:
    settings = PoolSettings(**{**SETTINGS.__dict__, "gpu_assignment": "device-plugin"})
    nodes = [KubernetesNode("gpu-1", "L40S", 4), KubernetesNode("mig-1", "A100-80GB-SXM", 7, mig_profile="1g.10gb")]
    inventory = Inventory.model_validate({"nodes": render.planned_capacity(nodes, "k8s")})
    deployments = [Deployment(name="big", model="Qwen/Qwen3-32B", max_model_len=32768, gpu_selector=["L40S"]),
                   DEPLOYMENTS[-1]]  # fmt: skip
    result = plan_cluster(inventory, deployments, owner_prefix="p/s/")
    assert result.ok, result.failures
    rendered = render.render_workloads(settings, result.model_dump(mode="json"), nodes)
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)
    objects = by_kind_name(rendered)
    assert engine(objects["Deployment", "big-r0"])["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert engine(objects["Deployment", "slice-r0"])["resources"] == {"limits": {"nvidia.com/mig-1g.10gb": "1"}}
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(engine(objects["Deployment", "big-r0"]))


def test_strict_validation_is_not_vacuous(objects: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    engine(deployment)["gpus"] = 1  # an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


# ----- the agent ---------------------------------------------------------------------------------------------


def test_agent_daemonsets_select_gpu_nodes_and_tolerate_the_gpu_taint(objects: list[dict[str, Any]]) -> None:
    objs = by_kind_name(objects)
    nvidia = objs["DaemonSet", "k8s-agent-nvidia"]["spec"]["template"]["spec"]
    terms = nvidia["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = [[e["key"] for e in term["matchExpressions"]] for term in terms]
    assert keys == [["nvidia.com/gpu.present", "kubernetes.io/hostname"],
                    ["feature.node.kubernetes.io/pci-10de.present", "kubernetes.io/hostname"]]  # fmt: skip
    assert terms[0]["matchExpressions"][1]["values"] == ["gpu-1", "gpu-2", "mig-1", "pp-1", "pp-2"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in nvidia["tolerations"]
    agent = nvidia["containers"][0]
    assert "resources" in agent and not any("nvidia.com" in k for k in agent["resources"].get("limits", {}))
    assert env_of(agent)["NVIDIA_VISIBLE_DEVICES"] == "all" and env_of(agent)["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert agent["ports"][0]["hostPort"] == 10150 and nvidia["hostPID"] is True
    assert "--token-file" in agent["args"] and "t0ken" not in json.dumps(nvidia)
    assert agent["command"][:2] == ["/bin/sh", "-c"] and "--labels" in agent["command"][2]
    node_labels = objs["ConfigMap", "k8s-node-labels"]["data"]
    assert node_labels["gpu-1"] == "gpustack.ai/pool=k8s,gpustack.ai/runner=kubernetes,tier=shared,zone=a"
    ascend = objs["DaemonSet", "k8s-agent-ascend"]["spec"]["template"]["spec"]
    expressions = ascend["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]  # fmt: skip
    assert expressions[0] == {"key": "accelerator", "operator": "In",
                              "values": ["huawei-Ascend910", "huawei-Ascend310P", "huawei-Ascend310"]}  # fmt: skip
    assert expressions[1]["values"] == ["npu-1"]
    assert ascend["containers"][0]["args"][ascend["containers"][0]["args"].index("--devices") + 1] == "ascend"


def test_agent_rbac_is_read_only_and_bound_to_its_service_account(objects: list[dict[str, Any]]) -> None:
    objs = by_kind_name(objects)
    role = objs["ClusterRole", "gpustack-k8s-agent"]
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"nodes", "pods"}
    binding = objs["ClusterRoleBinding", "gpustack-k8s-agent"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "k8s-agent", "namespace": "gpustack"}]
    daemonset = objs["DaemonSet", "k8s-agent-nvidia"]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == "k8s-agent"


def test_endpoints_are_the_agents_host_port_on_each_node() -> None:
    endpoints = render.agent_endpoints(SETTINGS, NODES)
    assert endpoints["gpu-1"] == "https://10.0.0.1:10150" and endpoints["npu-1"] == "https://npu-1:10150"
    assert list(endpoints) == sorted(endpoints)


# ----- planned capacity --------------------------------------------------------------------------------------


def test_planned_capacity_comes_from_the_gpu_catalog() -> None:
    documents = {d["name"]: CapacityDocument.model_validate(d) for d in render.planned_capacity(NODES, "k8s")}
    l40s = documents["gpu-1"]
    assert [d.memory_total for d in l40s.devices] == [gpu("L40S").memory_bytes] * 2
    assert l40s.devices[0].product == "NVIDIA L40S" and l40s.devices[0].compute_capability == "8.9"
    assert l40s.labels == {"zone": "a", "tier": "shared", "gpustack.ai/pool": "k8s", "gpustack.ai/runner": "kubernetes"}
    assert documents["npu-1"].devices[0].vendor == "ascend" and len(documents["npu-1"].devices) == 8
    mig = documents["mig-1"].devices
    assert len(mig) == 7 and mig[0].memory_total == 10 * 10**9 and mig[0].product.endswith("MIG 1g.10gb")


def test_unknown_gpu_product_names_the_fix() -> None:
    with pytest.raises(RenderError, match="gpu_product 'Voodoo 5' is not in the GPU catalog"):
        render.planned_capacity([KubernetesNode("x", "Voodoo 5", 1)], "k8s")
    with pytest.raises(RenderError, match="is a ascend device, not nvidia"):
        render.planned_capacity([KubernetesNode("x", "Ascend-910B3", 1)], "k8s")


# ----- engine workloads ----------------------------------------------------------------------------------------


def test_single_node_replica_is_a_pinned_deployment(objects: list[dict[str, Any]], plan: dict[str, Any]) -> None:
    objs = by_kind_name(objects)
    chat = objs["Deployment", "chat-r0"]
    placement = plan["replicas"]["chat/0"]["placement"]
    node = placement["placements"][0]["node"]
    pod = chat["spec"]["template"]["spec"]
    expression = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]  # fmt: skip
    assert expression == {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    assert chat["spec"]["strategy"] == {"type": "Recreate"} and chat["spec"]["replicas"] == 1
    container = engine(chat)
    assert container["image"].startswith("vllm/vllm-openai:") and container["command"] == ["vllm"]
    assert "{port}" not in json.dumps(container) and container["args"][container["args"].index("--port") + 1] == "8000"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "models"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/dev/shm", "/root/.cache/huggingface"}
    env = env_of(container)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert env["HF_HOME"] == "/root/.cache/huggingface"
    annotations = chat["metadata"]["annotations"]
    assert annotations["gpustack.ai/owner"] == "proj/dev/chat/r0/"
    assert annotations["gpustack.ai/memory-fraction"] == f"{placement['memory_fraction']:g}"


def test_plan_assignment_gives_pods_the_planned_devices(objects: list[dict[str, Any]], plan: dict[str, Any]) -> None:
    """Memory-fraction sharing: the pod gets exactly the planned device indices and requests no GPU resource, so
    two replicas can share one GPU, each inside its memory fraction."""
    objs = by_kind_name(objects)
    for key in ("chat/0", "chat/1", "small/0"):
        placement = plan["replicas"][key]["placement"]["placements"][0]
        container = engine(objs["Deployment", render.replica_name(*key.split("/")[:1], int(key[-1]))])
        env = env_of(container)
        assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(str(i) for i in placement["device_indices"])
        assert "resources" not in container
    used = [(p["node"], i) for k in ("chat/0", "chat/1", "small/0")
            for p in plan["replicas"][k]["placement"]["placements"] for i in p["device_indices"]]  # fmt: skip
    assert len(set(used)) < len(used), "binpack shares a GPU between small and a chat replica"
    api_key = env_of(engine(objs["Deployment", "small-r0"]))
    secret_refs = [v for v in api_key.values()
                   if isinstance(v, dict) and v.get("secretKeyRef", {}).get("name") == "k8s-secrets"]  # fmt: skip
    assert secret_refs and "k3y" not in json.dumps(objs["Deployment", "small-r0"])


def test_device_plugin_assignment_refuses_shared_gpus(plan: dict[str, Any]) -> None:
    settings = PoolSettings(**{**SETTINGS.__dict__, "gpu_assignment": "device-plugin"})
    shared = copy.deepcopy(plan)
    shared["replicas"]["small/0"]["launch"][0]["node"] = shared["replicas"]["chat/0"]["launch"][0]["node"]
    shared["replicas"]["small/0"]["launch"][0]["visible_devices"] = shared["replicas"]["chat/0"]["launch"][0][
        "visible_devices"]  # fmt: skip
    with pytest.raises(RenderError, match=r"shares GPUs by memory fraction \(gpu-\d:\d by chat#0, small#0\)"):
        render.render_workloads(settings, shared, NODES)


def test_multi_node_replica_is_a_leader_and_worker_statefulset_pair(objects: list[dict[str, Any]],
                                                                     plan: dict[str, Any]) -> None:  # fmt: skip
    wide = plan["replicas"]["wide/0"]
    assert [spec["node"] for spec in wide["launch"]] == ["pp-1", "pp-2"]
    objs = by_kind_name(objects)
    leader, workers = objs["StatefulSet", "wide-r0-leader"], objs["StatefulSet", "wide-r0-workers"]
    assert objs["Service", "wide-r0"]["spec"]["clusterIP"] == "None"
    assert leader["spec"]["serviceName"] == workers["spec"]["serviceName"] == "wide-r0"
    assert leader["spec"]["replicas"] == 1 and workers["spec"]["replicas"] == 1

    def pinned(obj: dict[str, Any]) -> list[str]:
        terms = obj["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]  # fmt: skip
        return terms[0]["matchExpressions"][0]["values"]

    assert pinned(leader) == ["pp-1"] and pinned(workers) == ["pp-2"]
    assert workers["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert leader["spec"]["template"]["spec"]["hostNetwork"] is True
    assert "readinessProbe" in engine(leader) and "readinessProbe" not in engine(workers)
    assert engine(workers)["args"][engine(workers)["args"].index("--node-rank") + 1] == "1"
    assert leader["metadata"]["labels"]["gpustack.ai/role"] == "head"


def test_replicas_on_the_pool_are_run_by_kubernetes_and_their_pods_name_their_reservation(
    objects: list[dict[str, Any]], plan: dict[str, Any]
) -> None:
    """The plan marks every replica on the pool's nodes as run by Kubernetes (the agents only hold its memory,
    never start it), and each engine pod carries the id of the replica's external reservation on its node, by
    which the agent counts the pod's device memory as that reservation's."""
    from gpustack_pulumi.providers.model_replica import instance_id

    placed = [s for s in plan["replicas"].values() if s["status"] == "placed"]
    assert placed and {s["runner"] for s in placed} == {"kubernetes"}
    objs = by_kind_name(objects)
    small = plan["replicas"]["small/0"]
    assert env_of(engine(objs["Deployment", "small-r0"]))["GPUSTACK_INSTANCE_ID"] == instance_id(small["owner"], 0)
    wide = plan["replicas"]["wide/0"]
    leader, workers = objs["StatefulSet", "wide-r0-leader"], objs["StatefulSet", "wide-r0-workers"]
    assert env_of(engine(leader))["GPUSTACK_INSTANCE_ID"] == instance_id(wide["owner"], 0)
    assert env_of(engine(workers))["GPUSTACK_INSTANCE_ID"] == instance_id(wide["owner"], 1)
    assert instance_id(wide["owner"], 0) != instance_id(wide["owner"], 1)


def test_worker_statefulset_of_three_nodes_picks_its_launch_by_node() -> None:
    nodes = [KubernetesNode(f"pp-{i}", "NVIDIA L4", 1, address=f"10.0.1.{i}") for i in range(1, 5)]
    inventory = Inventory.model_validate({"nodes": render.planned_capacity(nodes, "k8s")})
    deployment = Deployment(name="wide", model="Qwen/Qwen3-32B", max_model_len=8192)
    result = plan_cluster(inventory, [deployment], owner_prefix="p/s/",
                          node_addresses={n.name: n.address or n.name for n in nodes})  # fmt: skip
    assert result.ok, result.failures
    if len(result.replicas["wide/0"].launch) < 3:
        pytest.skip("the planner found a placement on fewer than three nodes")
    objs = by_kind_name(render.render_workloads(SETTINGS, result.model_dump(mode="json"), nodes))
    workers = objs["StatefulSet", "wide-r0-workers"]
    assert workers["spec"]["replicas"] == len(result.replicas["wide/0"].launch) - 1
    container = engine(workers)
    assert container["command"][:2] == ["python3", "-c"]
    by_node = json.loads(env_of(container)["GPUSTACK_LAUNCH_BY_NODE"])
    assert set(by_node) == {spec["node"] for spec in result.replicas["wide/0"].launch[1:]}
    from gpustack_pulumi.providers.model_replica import instance_id

    owner = result.replicas["wide/0"].owner
    for rank, spec in enumerate(result.replicas["wide/0"].launch[1:], start=1):
        assert by_node[spec["node"]]["env"]["GPUSTACK_INSTANCE_ID"] == instance_id(owner, rank)
    for obj in objs.values():
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_ascend_replica_gets_its_npus(objects: list[dict[str, Any]]) -> None:
    npu = by_kind_name(objects)["Deployment", "npu-r0"]
    pod = npu["spec"]["template"]["spec"]
    assert "ASCEND_VISIBLE_DEVICES" in env_of(pod["containers"][0]) and "runtimeClassName" not in pod
    assert {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    settings = PoolSettings(**{**SETTINGS.__dict__, "gpu_assignment": "device-plugin"})
    limits, env = render._gpu_wiring(settings, NODES[4], [0, 1], "ascend")
    assert limits == {"huawei.com/Ascend910": "2"} and env == []


def test_service_and_disruption_budget_per_deployment(objects: list[dict[str, Any]]) -> None:
    objs = by_kind_name(objects)
    for name in ("chat", "small", "wide", "npu", "slice"):
        service, budget = objs["Service", name], objs["PodDisruptionBudget", name]
        assert service["spec"]["selector"]["gpustack.ai/role"] == "head"
        assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"]["gpustack.ai/deployment"] == name


# ----- conventions ---------------------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def walk(value: Any) -> list[Any]:
    found = [value]
    if isinstance(value, dict):
        for item in value.values():
            found += walk(item)
    elif isinstance(value, list):
        for item in value:
            found += walk(item)
    return found


def test_names_labels_and_annotations_follow_the_conventions(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        meta = obj["metadata"]
        assert _DNS_LABEL.match(meta["name"]), meta["name"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "pulumi" and labels["app.kubernetes.io/part-of"] == "gpustack"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"} <= set(labels)
        for value in labels.values():
            assert len(value) <= 63 and _LABEL_VALUE.match(value), value
        cluster_scoped = obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding")
        assert ("namespace" in meta) is not cluster_scoped
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= template_labels.items()


def test_objects_are_server_side_apply_friendly(objects: list[dict[str, Any]]) -> None:
    """Full intent only: no status, no nulls, quantities as strings, list items unique by their merge key."""
    for obj in objects:
        assert "status" not in obj and set(obj["metadata"]) <= {"name", "namespace", "labels", "annotations"}
        assert None not in walk(obj)
        for item in walk(obj):
            if isinstance(item, dict) and "limits" in item:
                assert all(isinstance(v, str) for v in item["limits"].values())
            if isinstance(item, dict) and "containers" in item:
                assert len({v["name"] for v in item.get("volumes", [])}) == len(item.get("volumes", []))
                for container in item["containers"]:
                    names = [e["name"] for e in container.get("env", [])]
                    assert len(set(names)) == len(names), names
                    ports = [p["containerPort"] for p in container.get("ports", [])]
                    assert len(set(ports)) == len(ports)


def test_rendering_is_deterministic_and_skips_other_pools(plan: dict[str, Any]) -> None:
    first = render.render_workloads(SETTINGS, plan, NODES)
    assert json.dumps(first) == json.dumps(render.render_workloads(SETTINGS, copy.deepcopy(plan), NODES))
    only_l40s = [node for node in NODES if node.name.startswith("gpu-")]
    names = {o["metadata"]["name"] for o in render.render_workloads(SETTINGS, plan, only_l40s)}
    assert names == {"chat-r0", "chat-r1", "small-r0", "chat", "small"}
    half = [node for node in NODES if node.name != "pp-2"]
    with pytest.raises(RenderError, match="wide#0 spans this pool and pp-2"):
        render.render_workloads(SETTINGS, plan, half)
    assert render.render_workloads(SETTINGS, None, NODES) == []
    assert render.render_workloads(SETTINGS, {"status": "decided at update"}, NODES) == []


def test_names_are_dns_labels_and_never_collide() -> None:
    assert render.dns_name("chat-r0") == "chat-r0"
    long_a, long_b = "x" * 80 + "a", "x" * 80 + "b"
    assert render.dns_name(long_a) != render.dns_name(long_b) and len(render.dns_name(long_a)) <= 63
    assert render.dns_name("Chat") != render.dns_name("chat") and _DNS_LABEL.match(render.dns_name("Chat_Model.v2"))
    assert render.label_value("proj/dev/chat/r0/") != render.label_value("proj-dev-chat-r0")


def test_a_replica_cannot_be_half_pods_half_agent_processes() -> None:
    from gpustack_pulumi.cluster_plan import runner_of

    k8s_nodes = render.planned_capacity([KubernetesNode("gpu-a", "NVIDIA L4", 1)], "k8s")
    plain = {**k8s_nodes[0], "name": "ssh-b", "labels": {"tier": "x"}}
    inventory = Inventory.model_validate({"nodes": [*k8s_nodes, plain]})
    assert runner_of(inventory, ["gpu-a"]) == "kubernetes"
    assert runner_of(inventory, ["ssh-b"]) == "agent"
    assert "different runners (agent, kubernetes)" in runner_of(inventory, ["gpu-a", "ssh-b"])
