"""KubernetesGpuPool's rendered objects applied to a real kube-apiserver (with etcd; built from Go modules by
scripts/kube-apiserver.sh, started on 127.0.0.1 by tests/kube_support.py): each object is server-side applied
(PATCH application/apply-patch+yaml, fieldManager, force, fieldValidation=Strict), first with dryRun=All (nothing
stored), then for real; the objects read back keep every rendered field (the server only adds defaults), and the
server does validate (a bad label value is a 422).

The objects come from the render functions on a plan made by the product's planner (single-node replicas sharing
GPUs, a multi-node replica, MIG slices, Ascend NPUs; and the device-plugin assignment in a second pool), so a
change in render.py is tested here as it is. The pool renders no custom resources (a multi-node replica is a
leader/worker StatefulSet pair, not a LeaderWorkerSet), so no CRD has to be installed first.

Skipped when kube-apiserver and etcd are not built (see kube_support.missing_reason); .ci/run builds them.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from k8s_sample_cluster import DEPLOYMENTS, NODES, SETTINGS, plan_on_pool
from kube_support import KubeApiServer, kube_apiserver, missing_reason

from gpustack_pulumi.placement.models import Deployment
from gpustack_pulumi.pools.kubernetes import render
from gpustack_pulumi.pools.kubernetes.render import KubernetesNode, PoolSettings

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

FIELD_MANAGER = "gpustack-pulumi"
# A second pool in its own namespace with the device plugin assigning GPUs (whole GPUs and MIG slices).
DP_SETTINGS = PoolSettings(pool="dp", namespace="gpustack-dp", agent_image="ghcr.io/acme/gpustack-runtime",
                           agent_version="0.1.0", gpu_assignment="device-plugin")  # fmt: skip
DP_NODES = [
    KubernetesNode("dp-gpu-1", "L40S", 4),
    KubernetesNode("dp-mig-1", "A100-80GB-SXM", 7, mig_profile="1g.10gb"),
]
DP_DEPLOYMENTS = [
    Deployment(name="big", model="Qwen/Qwen3-32B", max_model_len=32768, gpu_selector=["L40S"]),
    Deployment(
        name="slice", model="Qwen/Qwen3-0.6B", max_model_len=4096, gpu_selector=["NVIDIA A100-SXM4-80GB MIG 1g.10gb"]
    ),
]


def pool_objects(
    settings: PoolSettings, nodes: list[KubernetesNode], deployments: list[Deployment], secrets: dict[str, str]
) -> list[dict[str, Any]]:
    """What KubernetesGpuPool creates: the agent objects, the Secret, the workloads of the plan on its nodes."""
    plan = plan_on_pool(settings.pool, nodes, deployments)
    return [*render.render_agent_objects(settings, nodes), render.render_secret(settings, secrets),
            *render.render_workloads(settings, plan, nodes)]  # fmt: skip


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    rendered = [*pool_objects(SETTINGS, NODES, DEPLOYMENTS, {"token": "t0ken", "api-key": "k3y"}),
                *pool_objects(DP_SETTINGS, DP_NODES, DP_DEPLOYMENTS, {"token": "dp-t0ken"})]  # fmt: skip
    kinds = {o["kind"] for o in rendered}
    assert kinds >= {"Namespace", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
                     "Service", "Secret", "Deployment", "StatefulSet", "PodDisruptionBudget"}, kinds  # fmt: skip
    assert not any("CustomResourceDefinition" in o["kind"] or "x-k8s.io" in o["apiVersion"] for o in rendered)
    # Namespaces first, as a real apply orders them (namespaced objects need theirs: NamespaceLifecycle).
    return sorted(rendered, key=lambda o: o["kind"] != "Namespace")


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApiServer]:
    with kube_apiserver() as server:
        yield server


@pytest.fixture(scope="module")
def http(kube: KubeApiServer) -> Iterator[httpx.Client]:
    with kube.client() as client:
        yield client


class Resources:
    """Kind -> (resource name, namespaced), from the server's own discovery documents."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.cache: dict[str, dict[str, tuple[str, bool]]] = {}

    def path(self, obj: dict[str, Any]) -> str:
        api_version = obj["apiVersion"]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if api_version not in self.cache:
            response = self.http.get(base)
            response.raise_for_status()
            self.cache[api_version] = {r["kind"]: (r["name"], r["namespaced"])
                                       for r in response.json()["resources"] if "/" not in r["name"]}  # fmt: skip
        resource, namespaced = self.cache[api_version][obj["kind"]]
        meta = obj["metadata"]
        scope = f"/namespaces/{meta['namespace']}" if namespaced else ""
        return f"{base}{scope}/{resource}/{meta['name']}"


@pytest.fixture(scope="module")
def resources(http: httpx.Client) -> Resources:
    return Resources(http)


def apply(http: httpx.Client, path: str, obj: dict[str, Any], *, dry_run: bool) -> httpx.Response:
    params = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
    if dry_run:
        params["dryRun"] = "All"
    # JSON is YAML: the body is the rendered dict as the provider would send it.
    return http.patch(path, params=params, content=json.dumps(obj),
                      headers={"Content-Type": "application/apply-patch+yaml"})  # fmt: skip


def differences(rendered: Any, live: Any, where: str = "") -> list[str]:
    """Rendered fields the live object lacks or holds differently (the server may only add, e.g. defaults)."""
    if isinstance(rendered, dict):
        if not isinstance(live, dict):
            return [f"{where}: {live!r} is not a mapping"]
        return [d for key, value in rendered.items()
                for d in differences(value, live.get(key), f"{where}.{key}")]  # fmt: skip
    if isinstance(rendered, list):
        if not isinstance(live, list) or len(live) != len(rendered):
            return [f"{where}: {live!r} != {rendered!r}"]
        pairs = enumerate(zip(rendered, live, strict=True))
        return [d for i, (a, b) in pairs for d in differences(a, b, f"{where}[{i}]")]
    return [] if rendered == live else [f"{where}: {live!r} != {rendered!r}"]


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """The rendered object as the server stores it: a Secret's write-only stringData becomes base64 data."""
    if obj["kind"] == "Secret" and "stringData" in obj:
        obj = copy.deepcopy(obj)
        data = obj.setdefault("data", {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(value.encode()).decode()
    return obj


@pytest.fixture(scope="module")
def applied(http: httpx.Client, resources: Resources, objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every object dry-run applied (and shown not stored), then applied for real; the live objects by key."""
    live: dict[str, dict[str, Any]] = {}
    for obj in objects:
        key, path = render.object_key(obj), resources.path(obj)
        dry = apply(http, path, obj, dry_run=True)
        assert dry.status_code in (200, 201), (key, dry.status_code, dry.text)
        assert dry.json()["metadata"]["name"] == obj["metadata"]["name"]
        assert http.get(path).status_code == 404, f"{key}: a dry run stored the object"
        real = apply(http, path, obj, dry_run=False)
        assert real.status_code == 201, (key, real.status_code, real.text)
        response = http.get(path)
        response.raise_for_status()
        live[key] = response.json()
    return live


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def test_every_object_is_accepted_and_keeps_every_rendered_field(
    objects: list[dict[str, Any]], applied: dict[str, dict[str, Any]]
) -> None:
    assert len(applied) == len(objects)
    for obj in objects:
        key = render.object_key(obj)
        assert not differences(as_stored(obj), applied[key]), (key, differences(as_stored(obj), applied[key]))
        managers = {entry["manager"]: entry["operation"] for entry in applied[key]["metadata"]["managedFields"]}
        assert managers == {FIELD_MANAGER: "Apply"}, (key, managers)


def test_key_fields_survive_the_round_trip(objects: list[dict[str, Any]], applied: dict[str, dict[str, Any]]) -> None:
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    assert {o["kind"] for o in workloads} == {"Deployment", "StatefulSet", "DaemonSet"}
    gpu_limits: set[str] = set()
    probed = secret_refs = 0
    for obj in workloads:
        live = applied[render.object_key(obj)]
        assert live["metadata"]["labels"] == obj["metadata"]["labels"]
        assert live["spec"]["selector"] == obj["spec"]["selector"]
        rendered_pod, live_pod = pod_spec(obj), pod_spec(live)
        for field in ("nodeSelector", "affinity", "tolerations", "volumes"):
            assert live_pod.get(field) == rendered_pod.get(field) or not differences(
                rendered_pod.get(field), live_pod.get(field)
            ), field
        for rendered_c, live_c in zip(rendered_pod["containers"], live_pod["containers"], strict=True):
            limits = rendered_c.get("resources", {}).get("limits", {})
            assert live_c.get("resources", {}).get("limits", {}) == limits
            gpu_limits |= {name for name in limits if name.startswith(("nvidia.com/", "huawei.com/"))}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in rendered_c:
                    probed += 1
                    assert not differences(rendered_c[probe], live_c[probe]), (obj["metadata"]["name"], probe)
            for env in live_c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == SETTINGS.secrets:
                    secret_refs += 1
        for volume in live_pod.get("volumes", []):
            if volume.get("secret", {}).get("secretName") in (SETTINGS.secrets, DP_SETTINGS.secrets):
                secret_refs += 1
    assert probed and secret_refs
    assert {"nvidia.com/gpu", "nvidia.com/mig-1g.10gb"} <= gpu_limits, gpu_limits
    # The tokens' Secret holds what was rendered (stringData stored as data).
    secret = applied[f"secret-{SETTINGS.namespace}-{SETTINGS.secrets}"]
    assert base64.b64decode(secret["data"]["token"]).decode() == "t0ken"


def test_a_second_apply_is_a_no_op(
    http: httpx.Client, resources: Resources, objects: list[dict[str, Any]], applied: dict[str, dict[str, Any]]
) -> None:
    for obj in objects:
        key = render.object_key(obj)
        again = apply(http, resources.path(obj), obj, dry_run=False)
        assert again.status_code == 200, (key, again.text)
        assert again.json()["metadata"]["resourceVersion"] == applied[key]["metadata"]["resourceVersion"], key


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_server_validates_a_bad_label_value_is_rejected(
    http: httpx.Client, resources: Resources, objects: list[dict[str, Any]], applied: Any, dry_run: bool
) -> None:
    bad = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    bad["metadata"]["name"] = f"bad-label-{str(dry_run).lower()}"
    bad["metadata"]["labels"]["gpustack.ai/deployment"] = "not a valid label value!"
    path = resources.path(bad)
    response = apply(http, path, bad, dry_run=dry_run)
    assert response.status_code == 422, response.text
    status = response.json()
    assert status["reason"] == "Invalid" and "metadata.labels" in status["message"], status
    assert http.get(path).status_code == 404


def test_the_server_refuses_unknown_fields(
    http: httpx.Client, resources: Resources, objects: list[dict[str, Any]], applied: Any
) -> None:
    bad = copy.deepcopy(next(o for o in objects if o["kind"] == "StatefulSet"))
    bad["metadata"]["name"] = "unknown-field"
    pod_spec(bad)["containers"][0]["gpus"] = 1
    response = apply(http, resources.path(bad), bad, dry_run=True)
    # Server-side apply turns the object into a typed patch first and reports a field outside the schema as a
    # failure to build it (kube-apiserver 1.37 answers 500 with this message, not a 4xx).
    assert response.is_error, response.text
    assert ".gpus: field not declared in schema" in response.text, response.text
