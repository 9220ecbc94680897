"""Every Kubernetes object of a :class:`KubernetesGpuPool`, rendered as plain dicts. PURE: settings, the declared
nodes and the cluster plan's replica slices in; manifests out. No network, no Pulumi, deterministic (same inputs
→ the same dicts, lists in a fixed order), so the tests validate each object with kubernetes-validate (strict)
and the component only hands the dicts to pulumi-kubernetes.

What the pool renders:

- the agent: a Namespace, a ServiceAccount with the least RBAC it needs (read its Node for allocatable GPUs,
  list/watch Pods to see what other pods hold on its node: that counts as foreign use), a DaemonSet per vendor on
  the pool's GPU nodes (NVIDIA nodes by GPU feature-discovery / NFD labels, tolerating the ``nvidia.com/gpu``
  taint; Ascend nodes by the MindCluster ``accelerator`` label) and a headless Service;
- per replica of a model deployment placed on the pool's nodes: a ``Deployment`` pinned by
  ``kubernetes.io/hostname`` (one node), or, for a multi-node replica, a LeaderWorkerSet-style pair of
  StatefulSets (a leader on the head node, the workers on the other nodes, one pod per node);
- per model deployment: a Service over its replicas' heads and a PodDisruptionBudget (one replica at a time).

**How GPUs reach an engine pod** — the pool's ``gpu_assignment``, one of two explicit choices:

- ``"plan"`` (default): the joint plan's device assignment, as on SSH hosts. The pod requests no GPU resource;
  ``NVIDIA_VISIBLE_DEVICES`` (``ASCEND_VISIBLE_DEVICES``) names exactly the planned device indices and the
  engine's memory fraction keeps it inside its claim, so several replicas share one GPU by memory fraction, and
  the agent's ledger admits every claim. The pool's nodes must be dedicated to gpustack: pods tolerate the
  ``gpustack.ai/dedicated`` taint, and the device plugin must not hand these GPUs to other pods (GPU operator:
  label the nodes ``nvidia.com/gpu.deploy.device-plugin=false``).
- ``"device-plugin"``: whole GPUs through the device plugin: ``nvidia.com/gpu`` limits (``nvidia.com/mig-<profile>``
  for a node declared with MIG slices, ``huawei.com/Ascend910`` for Ascend), the kubelet picks the physical
  devices. A plan that shares a GPU between replicas cannot be expressed this way and is refused, naming them.

Time-slicing and MPS are not used: a device-plugin slice cannot be pinned to the GPU the plan chose, time-slicing
isolates no memory, and MPS splits memory evenly rather than by each replica's fraction.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Manifest = dict[str, Any]
GpuAssignment = Literal["plan", "device-plugin"]
Vendor = Literal["nvidia", "ascend"]

PART_OF = "gpustack"
MANAGED_BY = "pulumi"
LABEL_PREFIX = "gpustack.ai"
INSTANCE_ID_ENV = "GPUSTACK_INSTANCE_ID"  # gpustack_runtime.wire.INSTANCE_ID_ENV: the agent reads it
DEDICATED_TAINT = f"{LABEL_PREFIX}/dedicated"
NVIDIA_GPU = "nvidia.com/gpu"
ASCEND_NPU = "huawei.com/Ascend910"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# GPU feature discovery (nvidia.com/gpu.present) or NFD's PCI vendor label (10de = NVIDIA): either selects a node.
NVIDIA_NODE_LABELS = ("nvidia.com/gpu.present", "feature.node.kubernetes.io/pci-10de.present")
ASCEND_NODE_LABEL = "accelerator"
ASCEND_ACCELERATORS = ("huawei-Ascend910", "huawei-Ascend310P", "huawei-Ascend310")
DEFAULT_ENGINE_PORT = 8000
DEFAULT_AGENT_PORT = 10150
DEFAULT_SHM_SIZE = "16Gi"
DEFAULT_CACHE_HOST_PATH = "/var/lib/gpustack/hf-cache"
CACHE_MOUNT = "/root/.cache/huggingface"
AGENT_STATE_HOST_PATH = "/var/lib/gpustack-agent"
TOKEN_MOUNT = "/etc/gpustack-agent"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
"""Keys of the agents' TLS certificate and private key in the pool's Secret (an ``AgentCertificate`` made by the
component: a DaemonSet's agent cannot report a certificate of its own back to Pulumi, so clients pin this one)."""
NODE_LABELS_MOUNT = "/etc/gpustack-node-labels"
_AGENT_WRAPPER = f'exec gpustack-agent "$@" --labels "$(cat {NODE_LABELS_MOUNT}/$NODE_NAME 2>/dev/null)"'
# Startup may download and load tens of GB: up to 30 min (180 × 10 s) before liveness starts counting.
STARTUP_PERIOD_S, STARTUP_FAILURES = 10, 180
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")
_MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


class RenderError(ValueError):
    """The plan or the settings cannot be rendered; the message names what and the fix."""


# ----- inputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesNode:
    """One GPU node of the pool as the user declares it (its Kubernetes node name and its GPUs)."""

    name: str
    gpu_product: str
    gpus: int
    vendor: Vendor = "nvidia"
    address: str | None = None
    """Where the agent's host port is reached (default: the node name)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    mig_profile: str | None = None
    """MIG slices ('1g.10gb', 'mixed' strategy): then ``gpus`` counts slices and each is one device."""


@dataclass(frozen=True)
class HfTokenRef:
    secret_name: str
    key: str = "token"


@dataclass(frozen=True)
class ModelCache:
    """Where engines keep downloaded weights: a PersistentVolumeClaim, or a host path (pods are node-pinned)."""

    pvc: str | None = None
    host_path: str = DEFAULT_CACHE_HOST_PATH


@dataclass(frozen=True)
class PoolSettings:
    pool: str
    namespace: str
    agent_image: str
    agent_version: str
    agent_port: int = DEFAULT_AGENT_PORT
    gpu_assignment: GpuAssignment = "plan"
    engine_port: int = DEFAULT_ENGINE_PORT
    shm_size: str = DEFAULT_SHM_SIZE
    runtime_class: str | None = "nvidia"
    hf_token: HfTokenRef | None = None
    model_cache: ModelCache = field(default_factory=ModelCache)
    secret_name: str = ""
    """The Secret holding the agent token (key ``token``) and the engines' secret references."""
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    engine_images: Mapping[str, str] = field(default_factory=dict)
    """Image per engine for launch specs that name none (a host process elsewhere, e.g. llama.cpp)."""

    @property
    def secrets(self) -> str:
        return self.secret_name or dns_name(f"{self.pool}-secrets")


# ----- names and labels ------------------------------------------------------------------------------------------


def dns_name(text: str, limit: int = 63) -> str:
    """A DNS-1123 label from ``text``: lowercase, [a-z0-9-], starts and ends alphanumeric, at most ``limit``
    characters; a shortened or altered name gets a hash of the original, so two names never collide."""
    name = _DNS_LABEL.sub("-", text.lower()).strip("-") or "x"
    if name == text and len(name) <= limit:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def label_value(text: str) -> str:
    """A label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends (hashed when shortened)."""
    value = _LABEL_VALUE.sub("-", text).strip("-._")
    if value == text and len(value) <= 63:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{value[:54].rstrip('-._')}-{digest}" if value else digest


def env_name(reference: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", reference)


def secret_key(reference: str) -> str:
    """Key of a secret reference in the pool's Secret (Secret keys: [-._a-zA-Z0-9]+)."""
    return re.sub(r"[^-._a-zA-Z0-9]", "-", reference)


def common_labels(settings: PoolSettings, component: str, name: str) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": label_value(settings.pool),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {**dict(settings.extra_labels), **labels}


def _meta(name: str, settings: PoolSettings, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None,
          *, namespaced: bool = True) -> Manifest:  # fmt: skip
    meta: Manifest = {"name": name}
    if namespaced:
        meta["namespace"] = settings.namespace
    meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# ----- the agent -------------------------------------------------------------------------------------------------


def agent_name(settings: PoolSettings) -> str:
    return dns_name(f"{settings.pool}-agent")


def render_namespace(settings: PoolSettings) -> Manifest:
    labels = {**common_labels(settings, "namespace", "gpustack"), "kubernetes.io/metadata.name": settings.namespace}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(settings.namespace, settings, labels,
                                                                        namespaced=False)}  # fmt: skip


def render_service_account(settings: PoolSettings) -> Manifest:
    labels = common_labels(settings, "agent", "gpustack-agent")
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(agent_name(settings), settings, labels),
        "automountServiceAccountToken": True,
    }


def render_agent_rbac(settings: PoolSettings) -> list[Manifest]:
    """The least the agent needs: read Nodes (its allocatable GPUs) and list/watch Pods (GPUs other pods hold on
    its node, counted as foreign use). Cluster-scoped because both span namespaces; nothing is writable."""
    labels = common_labels(settings, "agent", "gpustack-agent")
    name = dns_name(f"{settings.namespace}-{settings.pool}-agent", 253)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(name, settings, labels, namespaced=False),
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name, settings, labels, namespaced=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": agent_name(settings), "namespace": settings.namespace}],
    }
    return [role, binding]


def render_secret(settings: PoolSettings, values: Mapping[str, str]) -> Manifest:
    """The pool's Secret (agent token under ``token``, engine secret references by key). Values are the
    caller's (Pulumi secrets in the component); ``stringData`` so no base64 is computed here."""
    labels = common_labels(settings, "secrets", "gpustack")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(settings.secrets, settings, labels),
        "type": "Opaque",
        "stringData": {secret_key(k): v for k, v in sorted(values.items())},
    }


def node_labels_name(settings: PoolSettings) -> str:
    return dns_name(f"{settings.pool}-node-labels")


def node_labels(pool: str, node: KubernetesNode) -> dict[str, str]:
    """The labels a node's capacity document carries: the declared ones plus the pool and the runner, which
    deployments can select on (``node_selector``) and which tell a replica's runner (Kubernetes here)."""
    return {**dict(node.labels), f"{LABEL_PREFIX}/pool": label_value(pool), f"{LABEL_PREFIX}/runner": "kubernetes"}


def render_node_labels(settings: PoolSettings, nodes: Sequence[KubernetesNode]) -> Manifest:
    """Node name → ``k=v,k2=v2`` (the agent's ``--labels``), one key per node."""
    labels = common_labels(settings, "agent", "gpustack-agent")
    data = {
        node.name: ",".join(f"{k}={v}" for k, v in sorted(node_labels(settings.pool, node).items()))
        for node in sorted(nodes, key=lambda n: n.name)
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(node_labels_name(settings), settings, labels),
            "data": data}  # fmt: skip


def _nvidia_affinity(nodes: Sequence[str]) -> Manifest:
    terms = []
    for label in NVIDIA_NODE_LABELS:
        expressions = [{"key": label, "operator": "In", "values": ["true"]}]
        if nodes:
            expressions.append({"key": HOSTNAME_LABEL, "operator": "In", "values": list(nodes)})
        terms.append({"matchExpressions": expressions})
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def _ascend_affinity(nodes: Sequence[str]) -> Manifest:
    expressions = [{"key": ASCEND_NODE_LABEL, "operator": "In", "values": list(ASCEND_ACCELERATORS)}]
    if nodes:
        expressions.append({"key": HOSTNAME_LABEL, "operator": "In", "values": list(nodes)})
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}  # fmt: skip


def _gpu_tolerations(vendor: Vendor) -> list[Manifest]:
    resource = NVIDIA_GPU if vendor == "nvidia" else ASCEND_NPU
    return [
        {"key": resource, "operator": "Exists", "effect": "NoSchedule"},
        {"key": DEDICATED_TAINT, "operator": "Exists", "effect": "NoSchedule"},
    ]


def render_agent_daemonset(settings: PoolSettings, vendor: Vendor, nodes: Sequence[KubernetesNode],
                           tls_fingerprint: str | None = None) -> Manifest:  # fmt: skip
    """The agent on each of the pool's ``vendor`` nodes. It sees every device of its node without taking any
    from the device plugin (``NVIDIA_VISIBLE_DEVICES=all`` with the ``utility`` capability only: NVML, no CUDA),
    uses the host PID namespace to tell which device processes are foreign, and listens on a host port."""
    name = dns_name(f"{settings.pool}-agent-{vendor}")
    labels = {**common_labels(settings, "agent", "gpustack-agent"), f"{LABEL_PREFIX}/vendor": vendor}
    selector = {"app.kubernetes.io/instance": label_value(settings.pool), "app.kubernetes.io/component": "agent",
                f"{LABEL_PREFIX}/vendor": vendor}  # fmt: skip
    hostnames = sorted(node.name for node in nodes)
    env: list[Manifest] = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    if vendor == "nvidia":
        env += [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
                {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"}]  # fmt: skip
    args = [
        "--host", "0.0.0.0", "--port", str(settings.agent_port), "--node-name", "$(NODE_NAME)",
        "--token-file", f"{TOKEN_MOUNT}/token", "--state-dir", "/var/lib/gpustack-agent",
        "--tls-cert", f"{TOKEN_MOUNT}/{TLS_CERT_KEY}", "--tls-key", f"{TOKEN_MOUNT}/{TLS_KEY_KEY}",
        "--devices", "nvml" if vendor == "nvidia" else "ascend",
    ]  # fmt: skip
    probe = {"httpGet": {"path": "/healthz", "port": "agent", "scheme": "HTTPS"}, "periodSeconds": 10,
             "timeoutSeconds": 5}  # fmt: skip
    volumes: list[Manifest] = [
        # The token and the TLS key readable by the agent (root) only: the agent refuses a token file others read.
        {"name": "token", "secret": {"secretName": settings.secrets, "defaultMode": 0o400, "items": [
            {"key": "token", "path": "token"}, {"key": TLS_CERT_KEY, "path": TLS_CERT_KEY},
            {"key": TLS_KEY_KEY, "path": TLS_KEY_KEY}]}},
        {"name": "state", "hostPath": {"path": AGENT_STATE_HOST_PATH, "type": "DirectoryOrCreate"}},
    ]  # fmt: skip
    volumes.append({"name": "node-labels", "configMap": {"name": node_labels_name(settings)}})
    mounts = [{"name": "token", "mountPath": TOKEN_MOUNT, "readOnly": True},
              {"name": "state", "mountPath": "/var/lib/gpustack-agent"},
              {"name": "node-labels", "mountPath": NODE_LABELS_MOUNT, "readOnly": True}]  # fmt: skip
    if vendor == "ascend":
        for volume, path in (("ascend-driver", "/usr/local/Ascend/driver"), ("dcmi", "/usr/local/dcmi"),
                             ("npu-smi", "/usr/local/bin/npu-smi")):  # fmt: skip
            volumes.append({"name": volume, "hostPath": {"path": path}})
            mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    pod_spec: Manifest = {
        "serviceAccountName": agent_name(settings),
        "hostPID": True,
        "priorityClassName": "system-node-critical",
        "affinity": _nvidia_affinity(hostnames) if vendor == "nvidia" else _ascend_affinity(hostnames),
        "tolerations": _gpu_tolerations(vendor),
        "containers": [{
            "name": "agent",
            "image": f"{settings.agent_image}:{settings.agent_version}",
            # The node's labels (declared per node, one DaemonSet for all) come from the node-labels ConfigMap.
            "command": ["/bin/sh", "-c", _AGENT_WRAPPER, "gpustack-agent"],
            "args": args,
            "env": env,
            "ports": [{"name": "agent", "containerPort": settings.agent_port, "hostPort": settings.agent_port,
                       "protocol": "TCP"}],
            "readinessProbe": probe,
            "livenessProbe": {**probe, "failureThreshold": 6},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "volumeMounts": mounts,
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
        }],
        "volumes": volumes,
    }  # fmt: skip
    if vendor == "nvidia" and settings.runtime_class:
        pod_spec["runtimeClassName"] = settings.runtime_class
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(name, settings, labels),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            # A new certificate (its fingerprint in the template) rolls the agents: they read it at start.
            "template": {"metadata": {"labels": labels, **({"annotations": {
                f"{LABEL_PREFIX}/tls-fingerprint": tls_fingerprint}} if tls_fingerprint else {})},
                "spec": pod_spec},
        },
    }


def render_agent_service(settings: PoolSettings) -> Manifest:
    """Headless: one DNS record per agent pod, for in-cluster clients (Pulumi reaches agents on the host port)."""
    labels = common_labels(settings, "agent", "gpustack-agent")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(agent_name(settings), settings, labels),
        "spec": {
            "clusterIP": "None",
            "selector": {"app.kubernetes.io/instance": label_value(settings.pool),
                         "app.kubernetes.io/component": "agent"},
            "ports": [{"name": "agent", "port": settings.agent_port, "targetPort": "agent", "protocol": "TCP"}],
        },
    }  # fmt: skip


def render_agent_objects(settings: PoolSettings, nodes: Sequence[KubernetesNode],
                         tls_fingerprint: str | None = None) -> list[Manifest]:  # fmt: skip
    """Everything the agents need except the Secret (its values are secrets the caller supplies)."""
    objects = [render_namespace(settings), render_service_account(settings), *render_agent_rbac(settings),
               render_node_labels(settings, nodes)]  # fmt: skip
    for vendor in ("nvidia", "ascend"):
        of_vendor = [node for node in nodes if node.vendor == vendor]
        if of_vendor or (vendor == "nvidia" and not nodes):
            objects.append(render_agent_daemonset(settings, vendor, of_vendor, tls_fingerprint))
    objects.append(render_agent_service(settings))
    return objects


def agent_endpoints(settings: PoolSettings, nodes: Sequence[KubernetesNode]) -> dict[str, str]:
    """Node → agent URL: the agent's host port on the node's address (the node name when none is given)."""
    return {node.name: f"https://{node.address or node.name}:{settings.agent_port}" for node in sorted(
        nodes, key=lambda n: n.name)}  # fmt: skip


# ----- planned capacity ------------------------------------------------------------------------------------------


def mig_memory_bytes(profile: str) -> int:
    """Memory of one MIG slice from its profile name ('3g.40gb' → 40 GB, the name's decimal GB)."""
    match = _MIG_PROFILE.fullmatch(profile)
    if match is None:
        raise RenderError(f"MIG profile '{profile}' is not of the form <g>g.<mem>gb (e.g. 1g.10gb)")
    return int(match.group(2)) * 10**9


def mig_resource(profile: str) -> str:
    mig_memory_bytes(profile)  # validates
    return f"nvidia.com/mig-{profile}"


def planned_capacity(nodes: Sequence[KubernetesNode], pool: str) -> list[dict]:
    """Capacity documents (``gpustack_runtime.wire.CapacityDocument`` as JSON) of the declared nodes, memory totals
    from the GPU catalog, so the first preview places before any agent runs. Raises RenderError for a product the
    catalog does not know (name the catalog key, or a driver name)."""
    from gpustack_pulumi.catalog import gpu_for_product

    documents = []
    for node in sorted(nodes, key=lambda n: n.name):
        spec = gpu_for_product(node.gpu_product)
        if spec is None:
            from gpustack_pulumi.catalog import UnknownGpuError, gpu

            try:
                spec = gpu(node.gpu_product)
            except UnknownGpuError:
                raise RenderError(
                    f"node '{node.name}': gpu_product '{node.gpu_product}' is not in the GPU catalog; use a driver "
                    "name ('NVIDIA L40S') or a catalog key ('L40S', 'H100-SXM', 'Ascend-910B3')"
                ) from None
        if spec.vendor != node.vendor:
            raise RenderError(f"node '{node.name}': {spec.key} is a {spec.vendor} device, not {node.vendor}")
        memory = mig_memory_bytes(node.mig_profile) if node.mig_profile else spec.memory_bytes
        product = spec.names[0] + (f" MIG {node.mig_profile}" if node.mig_profile else "")
        devices = [
            {
                "index": index,
                "uuid": f"planned-{node.name}-{index}",
                "vendor": node.vendor,
                "product": product,
                "memory_total": memory,
                "memory_used": 0,
                "memory_allocated": 0,
                "compute_capability": spec.compute_capability,
            }
            for index in range(node.gpus)
        ]
        documents.append({"name": node.name, "labels": node_labels(pool, node), "devices": devices, "allocations": []})
    return documents


# ----- engines: one replica ------------------------------------------------------------------------------------


def replica_name(deployment: str, replica: int) -> str:
    return dns_name(f"{deployment}-r{replica}", 52)  # StatefulSet pods add '-N' and a revision hash label


def deployment_service_name(deployment: str) -> str:
    return dns_name(deployment)


def _engine_labels(settings: PoolSettings, deployment: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": label_value(settings.pool), "app.kubernetes.io/component": "engine",
            f"{LABEL_PREFIX}/deployment": label_value(deployment)}  # fmt: skip


def _container_for(settings: PoolSettings, spec: Mapping[str, Any]) -> tuple[list[str], list[Manifest], str]:
    """argv, env and image of one launch spec, ``{port}`` filled with the pod's engine port. The launch body
    (launchers for config files and in-process flags) is the engines' own rendering."""
    from gpustack_pulumi.engines.base import LaunchSpec
    from gpustack_pulumi.providers.model_replica import restore_nulls

    launch = LaunchSpec.model_validate(restore_nulls(LaunchSpec, dict(spec)))
    body = launch.to_launch_body()
    port = str(settings.engine_port)
    argv = [item.replace("{port}", port) for item in body.argv]
    env: list[Manifest] = [{"name": k, "value": v.replace("{port}", port)} for k, v in sorted(body.env.items())]
    for variable, reference in sorted(launch.secret_env.items()):
        env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": settings.secrets,
                                                                     "key": secret_key(reference)}}})  # fmt: skip
    image = launch.image or settings.engine_images.get(launch.engine)
    if not image:
        raise RenderError(
            f"replica {launch.deployment}#{launch.replica}: engine {launch.engine} has no container image; set "
            f"engine_options.image on the deployment or engine_images['{launch.engine}'] on the pool"
        )
    return argv, env, image


def _gpu_wiring(settings: PoolSettings, node: KubernetesNode | None, devices: Sequence[int],
                vendor: Vendor) -> tuple[dict[str, str], list[Manifest]]:  # fmt: skip
    """Resource limits and environment that give a pod its planned devices (see the module docstring)."""
    if not devices:
        return {}, []
    if settings.gpu_assignment == "device-plugin":
        if vendor == "ascend":
            return {ASCEND_NPU: str(len(devices))}, []
        resource = mig_resource(node.mig_profile) if node is not None and node.mig_profile else NVIDIA_GPU
        return {resource: str(len(devices))}, []
    indices = ",".join(str(i) for i in devices)
    if vendor == "ascend":
        return {}, [{"name": "ASCEND_VISIBLE_DEVICES", "value": indices}]
    return {}, [{"name": "NVIDIA_VISIBLE_DEVICES", "value": indices},
                {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"}]  # fmt: skip


def _cache_and_token(settings: PoolSettings) -> tuple[list[Manifest], list[Manifest], list[Manifest]]:
    cache = settings.model_cache
    volume: Manifest = {"name": "model-cache"}
    if cache.pvc:
        volume["persistentVolumeClaim"] = {"claimName": cache.pvc}
    else:
        volume["hostPath"] = {"path": cache.host_path, "type": "DirectoryOrCreate"}
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}, volume]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "model-cache", "mountPath": CACHE_MOUNT}]
    env: list[Manifest] = [{"name": "HF_HOME", "value": CACHE_MOUNT}]
    if settings.hf_token is not None:
        ref = {"secretKeyRef": {"name": settings.hf_token.secret_name, "key": settings.hf_token.key}}
        env += [{"name": "HF_TOKEN", "valueFrom": ref}, {"name": "HUGGING_FACE_HUB_TOKEN", "valueFrom": ref}]
    return volumes, mounts, env


def _probes(settings: PoolSettings, health_path: str | None) -> Manifest:
    if not health_path:
        return {}
    get = {"path": health_path, "port": "http"}
    return {
        "startupProbe": {"httpGet": get, "periodSeconds": STARTUP_PERIOD_S, "failureThreshold": STARTUP_FAILURES},
        "readinessProbe": {"httpGet": get, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
    }


def _merge_env(*groups: Iterable[Manifest]) -> list[Manifest]:
    """One entry per name (later groups win), sorted by name: server-side apply keys env by name."""
    merged: dict[str, Manifest] = {}
    for group in groups:
        for item in group:
            merged[item["name"]] = item
    return [merged[name] for name in sorted(merged)]


def _pod_template(settings: PoolSettings, spec: Mapping[str, Any], node: KubernetesNode | None, vendor: Vendor,
                  labels: Mapping[str, str], annotations: Mapping[str, str], *, host_network: bool,
                  affinity: Manifest, instance: str) -> Manifest:  # fmt: skip
    argv, engine_env, image = _container_for(settings, spec)
    limits, device_env = _gpu_wiring(settings, node, spec.get("visible_devices") or [], vendor)
    volumes, mounts, cache_env = _cache_and_token(settings)
    # The agent counts the engine's device memory as the replica's external reservation by this variable.
    node_env = [{"name": "GPUSTACK_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": INSTANCE_ID_ENV, "value": instance}]  # fmt: skip
    container: Manifest = {
        "name": "engine",
        "image": image,
        "command": argv[:1],
        "args": argv[1:],
        "env": _merge_env(node_env, cache_env, engine_env, device_env),
        "ports": [{"name": "http", "containerPort": settings.engine_port, "protocol": "TCP"}],
        **_probes(settings, spec.get("health_path")),
        "volumeMounts": mounts,
    }
    if limits:
        container["resources"] = {"limits": limits}
    pod: Manifest = {
        "affinity": affinity,
        "tolerations": _gpu_tolerations(vendor),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": volumes,
    }
    if vendor == "nvidia" and settings.runtime_class and spec.get("visible_devices"):
        pod["runtimeClassName"] = settings.runtime_class
    if host_network:
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}, "spec": pod}


def _pin(hostnames: Sequence[str]) -> Manifest:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": list(hostnames)}]}]}}}  # fmt: skip


def _annotations(replica_slice: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, str]:
    placement = replica_slice.get("placement") or {}
    fraction = placement.get("memory_fraction")
    return {
        f"{LABEL_PREFIX}/owner": str(replica_slice["owner"]),
        f"{LABEL_PREFIX}/devices": ",".join(str(i) for i in spec.get("visible_devices") or []) or "cpu",
        f"{LABEL_PREFIX}/memory-bytes-per-device": str(int(spec.get("memory_bytes_per_device") or 0)),
        f"{LABEL_PREFIX}/memory-fraction": "" if fraction is None else f"{fraction:g}",
        f"{LABEL_PREFIX}/tp-pp": f"{placement.get('tensor_parallel_size', 1)}x"
        f"{placement.get('pipeline_parallel_size', 1)}",
        f"{LABEL_PREFIX}/reason": str(placement.get("reason") or replica_slice.get("reason") or ""),
    }  # fmt: skip


def render_replica(settings: PoolSettings, replica_slice: Mapping[str, Any],
                   nodes: Mapping[str, KubernetesNode]) -> list[Manifest]:  # fmt: skip
    """The workload of one placed replica (a ReplicaSlice as JSON): a Deployment on one node, or a leader and a
    worker StatefulSet (with the headless Service they need) across several."""
    from gpustack_pulumi.providers.model_replica import instance_id

    if replica_slice.get("status") != "placed":
        return []
    launch: list[Mapping[str, Any]] = list(replica_slice.get("launch") or [])
    if not launch:
        raise RenderError(f"replica {replica_slice.get('deployment')}#{replica_slice.get('replica')} has no launch")
    deployment, index = str(replica_slice["deployment"]), int(replica_slice["replica"])
    name = replica_name(deployment, index)
    head = launch[0]
    head_node = nodes.get(head["node"])
    vendor: Vendor = head_node.vendor if head_node else "nvidia"
    base = {
        **common_labels(settings, "engine", "gpustack-engine"),
        **_engine_labels(settings, deployment),
        f"{LABEL_PREFIX}/replica": str(index),
        "app.kubernetes.io/version": label_value(str(head.get("engine_version") or "unknown")),
        f"{LABEL_PREFIX}/engine": label_value(str(head.get("engine"))),
    }
    owner = str(replica_slice["owner"])
    if len(launch) == 1:
        labels = {**base, f"{LABEL_PREFIX}/role": "head",
                  f"{LABEL_PREFIX}/instance-id": label_value(instance_id(owner, 0))}  # fmt: skip
        selector = {**_engine_labels(settings, deployment), f"{LABEL_PREFIX}/replica": str(index)}
        template = _pod_template(settings, head, head_node, vendor, labels, _annotations(replica_slice, head),
                                 host_network=False, affinity=_pin([head["node"]]),
                                 instance=instance_id(owner, 0))  # fmt: skip
        return [{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, settings, labels, _annotations(replica_slice, head)),
            "spec": {
                "replicas": 1,
                "revisionHistoryLimit": 3,
                # Pinned GPUs: a surge pod would need the same devices twice.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector},
                "template": template,
            },
        }]  # fmt: skip
    return _render_multi_node(settings, replica_slice, launch, nodes, name, base, vendor)


def _render_multi_node(settings: PoolSettings, replica_slice: Mapping[str, Any], launch: list[Mapping[str, Any]],
                       nodes: Mapping[str, KubernetesNode], name: str, base: Mapping[str, str],
                       vendor: Vendor) -> list[Manifest]:  # fmt: skip
    """LeaderWorkerSet-style: a leader StatefulSet (1 pod, the head's node) and a worker StatefulSet (one pod per
    worker node: pinned to the worker nodes, kept apart by anti-affinity). Each worker pod runs the launch spec of
    the node it lands on (chosen by ``spec.nodeName``), so the pair needs no per-ordinal placement. Host network:
    the engines reach each other at the node addresses the plan gave them."""
    from gpustack_pulumi.providers.model_replica import instance_id

    deployment, index = str(replica_slice["deployment"]), int(replica_slice["replica"])
    owner = str(replica_slice["owner"])
    head, workers = launch[0], launch[1:]
    selector_base = {**_engine_labels(settings, deployment), f"{LABEL_PREFIX}/replica": str(index)}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, settings, {**base, f"{LABEL_PREFIX}/role": "group"}),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector_base,
                 "ports": [{"name": "http", "port": settings.engine_port, "targetPort": "http", "protocol": "TCP"}]},
    }  # fmt: skip
    objects: list[Manifest] = [service]
    for role, specs in (("head", [head]), ("worker", workers)):
        labels = {**base, f"{LABEL_PREFIX}/role": role}
        selector = {**selector_base, f"{LABEL_PREFIX}/role": role}
        hostnames = [str(spec["node"]) for spec in specs]
        affinity = _pin(hostnames)
        if role == "worker":
            affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": dict(selector)}, "topologyKey": HOSTNAME_LABEL}]}  # fmt: skip
        first = specs[0]
        template = _pod_template(settings, first, nodes.get(str(first["node"])), vendor, labels,
                                 _annotations(replica_slice, first), host_network=True, affinity=affinity,
                                 instance=instance_id(owner, launch.index(first)))  # fmt: skip
        if role == "worker" and len(specs) > 1:
            ids = {str(spec["node"]): instance_id(owner, launch.index(spec)) for spec in specs}
            _select_launch_by_node(settings, template, specs, vendor, ids)
        objects.append({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(f"{name}-{'leader' if role == 'head' else 'workers'}", settings, labels,
                              _annotations(replica_slice, first)),
            "spec": {
                "replicas": len(specs),
                "serviceName": name,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector},
                "template": template,
            },
        })  # fmt: skip
    return objects


# A worker pod runs the argv and environment planned for the node it landed on (GPUSTACK_NODE).
_BY_NODE_LAUNCHER = (
    "import json,os;l=json.loads(os.environ['GPUSTACK_LAUNCH_BY_NODE'])[os.environ['GPUSTACK_NODE']];"
    "os.environ.update(l['env']);os.execvp(l['argv'][0],l['argv'])"
)


def _select_launch_by_node(
    settings: PoolSettings,
    template: Manifest,
    specs: Sequence[Mapping[str, Any]],
    vendor: Vendor,
    instance_ids: Mapping[str, str],
) -> None:
    counts = {len(spec.get("visible_devices") or []) for spec in specs}
    if settings.gpu_assignment == "device-plugin" and len(counts) > 1:
        raise RenderError(
            f"replica {specs[0]['deployment']}#{specs[0]['replica']}: its workers use different numbers of GPUs, "
            "which one StatefulSet cannot request under gpu_assignment 'device-plugin'; use gpu_assignment 'plan'"
        )
    visible = sorted({int(i) for spec in specs for i in spec.get("visible_devices") or []})
    by_node: dict[str, dict[str, Any]] = {}
    for spec in specs:
        argv, env, _image = _container_for(settings, spec)
        plain = {item["name"]: item["value"] for item in env if "value" in item}
        plain[INSTANCE_ID_ENV] = instance_ids[str(spec["node"])]
        if settings.gpu_assignment == "plan":
            # The runtime exposes the union, renumbered from 0 inside the container: the node's own devices
            # are their positions in it.
            positions = [visible.index(int(i)) for i in spec.get("visible_devices") or []]
            own = "CUDA_VISIBLE_DEVICES" if vendor == "nvidia" else "ASCEND_RT_VISIBLE_DEVICES"
            plain[own] = ",".join(str(p) for p in positions)
        by_node[str(spec["node"])] = {"argv": argv, "env": plain}
    container = template["spec"]["containers"][0]
    container["command"] = ["python3", "-c", _BY_NODE_LAUNCHER]
    container["args"] = []
    extra = [{"name": "GPUSTACK_LAUNCH_BY_NODE", "value": json.dumps(by_node, sort_keys=True)}]
    if settings.gpu_assignment == "plan" and visible:
        union = "NVIDIA_VISIBLE_DEVICES" if vendor == "nvidia" else "ASCEND_VISIBLE_DEVICES"
        extra.append({"name": union, "value": ",".join(str(i) for i in visible)})
    container["env"] = _merge_env(container["env"], extra)


def render_deployment_objects(settings: PoolSettings, deployment: str) -> list[Manifest]:
    """Per model deployment: a Service over its replicas' heads, and a PodDisruptionBudget that lets a drain take
    one replica at a time (every replica is node-pinned: a stricter budget would block drains for good)."""
    labels = {**common_labels(settings, "engine", "gpustack-engine"), **_engine_labels(settings, deployment)}
    heads = {**_engine_labels(settings, deployment), f"{LABEL_PREFIX}/role": "head"}
    name = deployment_service_name(deployment)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, settings, labels),
        "spec": {"type": "ClusterIP", "selector": heads,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }  # fmt: skip
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, settings, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _engine_labels(settings, deployment)}},
    }  # fmt: skip
    return [service, budget]


def check_shared_devices(slices: Iterable[Mapping[str, Any]]) -> None:
    """Under ``device-plugin`` assignment each GPU holds one replica: name every GPU the plan shares."""
    users: dict[tuple[str, int], list[str]] = {}
    for replica_slice in slices:
        for spec in replica_slice.get("launch") or []:
            for device in spec.get("visible_devices") or []:
                who = f"{replica_slice['deployment']}#{int(replica_slice['replica'])}"
                users.setdefault((str(spec["node"]), int(device)), []).append(who)
    shared = {key: who for key, who in users.items() if len(who) > 1}
    if shared:
        detail = "; ".join(f"{node}:{device} by {', '.join(who)}" for (node, device), who in sorted(shared.items()))
        raise RenderError(
            "gpu_assignment 'device-plugin' gives each replica whole GPUs, but the plan shares GPUs by memory "
            f"fraction ({detail}); use gpu_assignment 'plan' (the plan's device assignment), or keep these "
            "deployments apart with node_selector"
        )


def render_workloads(settings: PoolSettings, plan: Mapping[str, Any] | None,
                     nodes: Sequence[KubernetesNode]) -> list[Manifest]:  # fmt: skip
    """Every engine object for the replicas the cluster plan (``GpuCluster.plan`` as JSON) put on this pool's
    nodes, in a stable order. Replicas elsewhere (another pool) and pending ones render nothing."""
    by_name = {node.name: node for node in nodes}
    slices = [
        s for _key, s in sorted(((plan or {}).get("replicas") or {}).items())
        if s.get("status") == "placed" and any(spec.get("node") in by_name for spec in s.get("launch") or [])
    ]  # fmt: skip
    for replica_slice in slices:
        off_pool = sorted({str(spec["node"]) for spec in replica_slice["launch"]} - set(by_name))
        if off_pool:
            raise RenderError(
                f"replica {replica_slice['deployment']}#{int(replica_slice['replica'])} spans this pool and "
                f"{', '.join(off_pool)}: a multi-node replica must stay inside one Kubernetes pool"
            )
    if settings.gpu_assignment == "device-plugin":
        check_shared_devices(slices)
    objects: list[Manifest] = []
    for replica_slice in slices:
        objects += render_replica(settings, replica_slice, by_name)
    for deployment in sorted({str(s["deployment"]) for s in slices}):
        objects += render_deployment_objects(settings, deployment)
    return objects


def object_key(manifest: Mapping[str, Any]) -> str:
    """A stable resource name for an object: kind, namespace and name."""
    meta = manifest["metadata"]
    return "-".join(part for part in (manifest["kind"].lower(), meta.get("namespace"), meta["name"]) if part)
