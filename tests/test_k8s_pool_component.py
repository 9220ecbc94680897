"""KubernetesGpuPool as a component: the resource graph under Pulumi mocks (the cluster's ClusterPlan resource
placing on the pool's planned capacity with the product's own plan_cluster, the workloads rendered from that plan),
argument errors before anything is registered, and secrets kept secret."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
from gpustack_runtime.wire import Inventory
from harness.recording_mocks import RecordingMocks
from pulumi.runtime import mocks as pulumi_mocks

from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.components import ComponentArgsError, GpuCluster, ModelDeployment
from gpustack_pulumi.placement.models import Deployment
from gpustack_pulumi.pools import NodePool
from gpustack_pulumi.pools.kubernetes import KubernetesGpuPool
from gpustack_pulumi.pools.kubernetes.render import planned_capacity

NODES = [
    {"name": "gpu-1", "gpu_product": "NVIDIA L40S", "gpus": 2, "address": "10.0.0.1"},
    {"name": "gpu-2", "gpu_product": "L40S", "gpus": 2, "address": "10.0.0.2", "labels": {"zone": "b"}},
]
ARGS: dict[str, Any] = {
    "nodes": NODES,
    "agent_token": "s3cret",
    "agent_image": "ghcr.io/acme/gpustack-runtime",
    "agent_version": "0.1.0",
    "hf_token": "hf_abc",
}


class PlanningMocks(RecordingMocks):
    """Records every resource; the ClusterPlan resource's output is the plan its provider would make at check on
    the planned capacity (plan_cluster, the provider's own function)."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        resource_id, outputs = super().new_resource(args)
        if args.name.endswith("-agent-tls"):
            # The AgentCertificate's real provider: a real certificate, as `up` would make.
            from gpustack_pulumi.providers.agent_certificate import AgentCertificateProvider

            made = AgentCertificateProvider().create({"names": args.inputs["names"], "rotation": 0})
            outputs = {**outputs, **made.outs}
        if args.typ.endswith("gpustack:ClusterPlan") and args.inputs.get("planned"):
            inventory = Inventory.model_validate({"nodes": args.inputs["planned"]})
            deployments = [Deployment.model_validate(d) for d in args.inputs["deployments"]]
            result = plan_cluster(inventory, deployments, owner_prefix=args.inputs["owner_prefix"])
            outputs["plan"] = {"status": "planned", "source": "planned", **result.model_dump(mode="json")}
        return resource_id, outputs


@pytest.fixture
def mocks():
    recorder = PlanningMocks()
    monitor = pulumi_mocks.MockMonitor(recorder)
    pulumi.runtime.set_mocks(recorder, preview=False, monitor=monitor)
    try:
        yield recorder, monitor
    finally:
        pulumi.runtime.settings.reset_options()


@pulumi.runtime.test
def test_pool_cluster_and_workloads_under_mocks(mocks) -> None:
    recorder, monitor = mocks
    pool = KubernetesGpuPool("k8s", ARGS)  # type: ignore[arg-type]
    assert isinstance(pool, NodePool)
    assert pool.planned_capacity == planned_capacity(pool.nodes, "k8s")
    cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": "s3cret"})  # type: ignore[list-item]
    ModelDeployment("chat", {"cluster": cluster, "model": "Qwen/Qwen3-8B", "replicas": 2, "max_model_len": 32768})
    workloads = pool.serve(cluster)

    def check(values: list) -> None:
        endpoints, _, fingerprints, cert_pem = values
        assert endpoints == {"gpu-1": "https://10.0.0.1:10150", "gpu-2": "https://10.0.0.2:10150"}
        from gpustack_runtime.tls import fingerprint_of_pem

        # One certificate for the pool: every node's agent is pinned to it.
        assert fingerprints == {"gpu-1": fingerprint_of_pem(cert_pem), "gpu-2": fingerprint_of_pem(cert_pem)}
        by_name = {r.name: r for r in recorder.resources}
        assert {"k8s", "k8s-agent-tls", "k8s-agents", "k8s-secrets", "k8s-workloads", "gpus", "gpus-plan"} <= set(
            by_name
        )
        assert by_name["k8s-agent-tls"].inputs["names"] == ["10.0.0.1", "10.0.0.2", "gpu-1", "gpu-2"]
        assert by_name["k8s"].typ == "gpustack:index:KubernetesGpuPool" and not by_name["k8s"].custom
        agents = by_name["k8s-agents"]
        assert agents.typ == "kubernetes:yaml/v2:ConfigGroup"
        kinds = [o["kind"] for o in agents.inputs["objs"]]
        assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet",
                         "Service"]  # fmt: skip
        assert "s3cret" not in json.dumps(agents.inputs) and "hf_abc" not in json.dumps(agents.inputs)
        assert "PRIVATE KEY" not in json.dumps(agents.inputs)
        [daemonset] = [o for o in agents.inputs["objs"] if o["kind"] == "DaemonSet"]
        template = daemonset["spec"]["template"]
        assert template["metadata"]["annotations"] == {"gpustack.ai/tls-fingerprint": fingerprints["gpu-1"]}
        args = template["spec"]["containers"][0]["args"]
        assert args[args.index("--tls-cert") + 1] == "/etc/gpustack-agent/tls.crt"
        assert args[args.index("--tls-key") + 1] == "/etc/gpustack-agent/tls.key"
        secret = by_name["k8s-secrets"]
        assert secret.typ == "kubernetes:core/v1:Secret"
        string_data = secret.inputs["stringData"]
        values = string_data.get("value")
        assert {k: values[k] for k in ("hf-token", "token")} == {"hf-token": "hf_abc", "token": "s3cret"}
        assert values["tls.crt"] == cert_pem and "PRIVATE KEY" in values["tls.key"]
        assert sorted(values) == ["hf-token", "tls.crt", "tls.key", "token"] and len(string_data) == 2
        plan = by_name["gpus-plan"]
        assert plan.inputs["planned"] == pool.planned_capacity
        objs = by_name["k8s-workloads"].inputs["objs"]
        names = [(o["kind"], o["metadata"]["name"]) for o in objs]
        assert names == [("Deployment", "chat-r0"), ("Deployment", "chat-r1"), ("Service", "chat"),
                         ("PodDisruptionBudget", "chat")]  # fmt: skip
        affinities = [o["spec"]["template"]["spec"]["affinity"]["nodeAffinity"] for o in objs[:2]]
        terms = [a["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0] for a in affinities]
        nodes = {term["matchExpressions"][0]["values"][0] for term in terms}
        assert nodes == {"gpu-1", "gpu-2"}  # replicas of one deployment apart
        env = {e["name"]: e.get("valueFrom") for e in objs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "k8s-secrets", "key": "hf-token"}}
        urns = {urn.rsplit("::", 1)[1]: urn for urn in monitor.resources}
        assert "gpustack:index:KubernetesGpuPool$kubernetes:yaml/v2:ConfigGroup" in urns["k8s-workloads"]
        assert "gpustack:index:KubernetesGpuPool$kubernetes:core/v1:Secret" in urns["k8s-secrets"]

    return pulumi.Output.all(pool.endpoints, workloads.urn, pool.fingerprints, pool.certificate.cert_pem).apply(check)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": []}, "nodes is empty"),
        ({"agent_image": "ghcr.io/acme/rt:1.0"}, "agent_image must be an image reference without tag"),
        ({"gpu_assignment": "mps"}, "gpu_assignment 'mps' is invalid; use plan or device-plugin"),
        ({"namespace": "GPU"}, "namespace 'GPU' must be a DNS label"),
        ({"shm_size": "lots"}, "shm_size 'lots' is not a Kubernetes quantity"),
        ({"agent_port": 0}, "agent_port must be 1-65535"),
        ({"hf_token_secret": {"name": "hf"}}, "give hf_token or hf_token_secret, not both"),
        ({"nodes": [{"name": "Node_1", "gpu_product": "L40S", "gpus": 1}]}, r"nodes\[0\]: name must be"),
        ({"nodes": [{"name": "n1", "gpu_product": "L40S", "gpus": 0}]}, r"nodes\[0\] \(n1\): gpus must be 1-64"),
        ({"nodes": [{"name": "n1", "gpu_product": "L40S", "gpus": 1, "gpu": 2}]}, r"unknown key\(s\) gpu"),
        ({"nodes": [{"name": "n1", "gpu_product": "L40S", "gpus": 1, "vendor": "amd"}]}, "vendor 'amd' is invalid"),
        (
            {"nodes": [{"name": "n1", "gpu_product": "A100-80GB-SXM", "gpus": 7, "mig_profile": "1g"}]},
            "MIG profile '1g' is not of the form",
        ),
        ({"nodes": [{"name": "n1", "gpu_product": "Voodoo 5", "gpus": 1}]}, "'Voodoo 5' is not in the GPU catalog"),
        ({"nodes": [NODES[0], NODES[0]]}, "node 'gpu-1' is declared twice"),
    ],
)
@pulumi.runtime.test
def test_bad_arguments_fail_before_registering(mocks, change: dict, message: str) -> None:
    recorder, _ = mocks
    with pytest.raises(ComponentArgsError, match=message):
        KubernetesGpuPool("k8s", {**ARGS, **change})  # type: ignore[arg-type]
    assert recorder.resources == []


def test_device_plugin_pool_fails_the_program_on_a_shared_plan(mocks) -> None:
    """Under device-plugin assignment a plan that shares a GPU cannot be rendered: the program (so `pulumi
    preview`) fails, naming the GPU, the replicas and the fix."""

    @pulumi.runtime.test
    def program():
        pool = KubernetesGpuPool("k8s", {**ARGS, "nodes": NODES[:1], "gpu_assignment": "device-plugin"})  # type: ignore[arg-type]
        cluster = GpuCluster("gpus", {"pools": [pool], "agent_token": "s3cret"})  # type: ignore[list-item]
        for name in ("a", "b", "c"):
            ModelDeployment(name, {"cluster": cluster, "model": "Qwen/Qwen3-0.6B", "max_model_len": 4096})
        return pool.serve(cluster).urn

    with pytest.raises(ValueError, match=r"shares GPUs by memory fraction \(gpu-1:0 by a#0, b#0, c#0\); use gpu_"):
        program()
