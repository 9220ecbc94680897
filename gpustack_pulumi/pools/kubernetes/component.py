# No `from __future__ import annotations`: Pulumi reads component annotations at runtime (see components/__init__.py).
"""KubernetesGpuPool: the GPU nodes of an existing Kubernetes cluster as a node pool, with pulumi-kubernetes.

The component validates its arguments, renders every object with the pure functions of
:mod:`gpustack_pulumi.pools.kubernetes.render`, and creates them:

- ``{name}-agent-tls`` (``AgentCertificate``): the agents' TLS certificate, made once and kept in state (the key a
  secret); its fingerprint is what the cluster pins for every node of the pool;
- ``{name}-secrets`` (``core.v1.Secret``): the agent token, the agents' certificate and key, and the engines'
  secret values (HF token, API keys), as Pulumi secrets;
- ``{name}-agents`` (``yaml.v2.ConfigGroup``): Namespace, ServiceAccount, ClusterRole(Binding), the agent
  DaemonSet(s) and the agents' headless Service;
- ``serve(cluster)`` → ``{name}-workloads`` (``yaml.v2.ConfigGroup``): the Deployments / StatefulSet pairs,
  Services and PodDisruptionBudgets of the replicas the cluster's joint plan put on this pool's nodes.

pulumi-kubernetes applies with server-side apply (its default since v4); every object carries
``app.kubernetes.io/*`` labels and the placement as ``gpustack.ai/*`` annotations.
"""

import re
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from gpustack_pulumi.pools.kubernetes import render
from gpustack_pulumi.pools.kubernetes.render import (
    HfTokenRef,
    KubernetesNode,
    ModelCache,
    PoolSettings,
    RenderError,
)

GPU_ASSIGNMENTS = ("plan", "device-plugin")
VENDORS = ("nvidia", "ascend")
HF_TOKEN_REFERENCE = "hf-token"
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


class KubernetesNodeArgs(TypedDict):
    name: str
    """The Kubernetes node name (its ``kubernetes.io/hostname``); also the node name in placements."""
    gpu_product: str
    """Its GPU: a driver name ('NVIDIA L40S') or a catalog key ('L40S', 'H100-SXM', 'Ascend-910B3')."""
    gpus: int
    """How many GPUs (MIG slices when ``mig_profile`` is set)."""
    vendor: NotRequired[str]
    """nvidia (default) or ascend."""
    address: NotRequired[str]
    """Address where Pulumi reaches the agent's host port (default: the node name)."""
    labels: NotRequired[dict[str, str]]
    """Labels deployments can select on (``node_selector``)."""
    mig_profile: NotRequired[str]
    """MIG slice profile under the device plugin's ``mixed`` strategy, e.g. '1g.10gb'."""


class KubernetesGpuPoolArgs(TypedDict):
    nodes: list[KubernetesNodeArgs]
    """The GPU nodes the pool uses, with their GPUs (so the first preview already places)."""
    agent_token: pulumi.Input[str]
    """Bearer token the agents require (a secret; usually the cluster's)."""
    agent_image: str
    """The agent's container image, without tag (the tag is ``agent_version``)."""
    agent_version: NotRequired[str]
    """gpustack-runtime version (default: this package's version)."""
    namespace: NotRequired[str]
    """Namespace of everything the pool creates (default gpustack)."""
    agent_port: NotRequired[int]
    """The agents' host port (default 10150)."""
    gpu_assignment: NotRequired[str]
    """plan (default: the plan's devices, GPUs shared by memory fraction) or device-plugin (whole GPUs)."""
    engine_port: NotRequired[int]
    """Container port of every engine (default 8000)."""
    shm_size: NotRequired[str]
    """Size of the /dev/shm memory volume of engine pods (default 16Gi)."""
    runtime_class: NotRequired[str]
    """RuntimeClass of GPU pods (default nvidia; '' for none, when nvidia is containerd's default runtime)."""
    hf_token: NotRequired[pulumi.Input[str]]
    """A Hugging Face token (a secret); stored in the pool's Secret."""
    hf_token_secret: NotRequired[dict[str, str]]
    """Or an existing Secret holding it: ``{"name": ..., "key": "token"}``."""
    model_cache_pvc: NotRequired[str]
    """A PersistentVolumeClaim for the model cache (default: a host path on each node)."""
    model_cache_host_path: NotRequired[str]
    labels: NotRequired[dict[str, str]]
    """Extra labels on every object."""
    engine_images: NotRequired[dict[str, str]]
    """Image per engine for launch specs that name none."""
    secrets: NotRequired[dict[str, pulumi.Input[str]]]
    """Values of the secret references the deployments' engine options name (API keys)."""
    tls_rotation: NotRequired[int]
    """Bump to replace the agents' TLS certificate (the agents roll; clients pin the new fingerprint)."""


class KubernetesGpuPool(pulumi.ComponentResource):
    """GPU nodes of an existing Kubernetes cluster: the agent as a DaemonSet, replicas as pinned workloads.

    Pass a ``kubernetes.Provider`` through ``opts.providers`` (or ``opts.provider``) to choose the cluster;
    otherwise the ambient kubeconfig is used.
    """

    endpoints: pulumi.Output[dict[str, str]]
    """Node name → agent URL (HTTPS on the agent's host port), known once the agents' DaemonSet rolled out."""
    fingerprints: pulumi.Output[dict[str, str]]
    """Node name → the SHA-256 fingerprint of the agents' certificate (one ``AgentCertificate`` for the pool)."""
    planned_capacity: list[dict] | None
    """Capacity documents of the declared nodes (catalog memory totals), so the first preview places."""
    manifests: list[dict]
    """The agent objects as rendered (the Secret aside), for review and tests."""

    def __init__(self, name: str, args: KubernetesGpuPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        settings, nodes = pool_settings(name, args)
        try:
            self.planned_capacity = render.planned_capacity(nodes, name)
            self.manifests = render.render_agent_objects(settings, nodes)
        except RenderError as error:
            raise _args_error(f"KubernetesGpuPool '{name}': {error}") from None
        super().__init__("gpustack:index:KubernetesGpuPool", name, {}, opts)
        self.name = name
        self.settings = settings
        self.nodes = nodes
        child = pulumi.ResourceOptions(parent=self)
        from gpustack_pulumi.components.resources import AgentCertificate

        names = sorted({node.name for node in nodes} | {node.address for node in nodes if node.address})
        self.certificate = AgentCertificate(f"{name}-agent-tls", names, args.get("tls_rotation", 0), opts=child)
        values: dict[str, Any] = {"token": args["agent_token"], render.TLS_CERT_KEY: self.certificate.cert_pem,
                                  render.TLS_KEY_KEY: self.certificate.key_pem}  # fmt: skip
        if "hf_token" in args:
            values[HF_TOKEN_REFERENCE] = args["hf_token"]
        values.update(args.get("secrets") or {})
        string_data = pulumi.Output.secret(pulumi.Output.all(**values)).apply(
            lambda resolved: render.render_secret(settings, resolved)["stringData"]
        )
        secret_manifest = render.render_secret(settings, {})
        objects = self.certificate.fingerprint.apply(lambda fp: render.render_agent_objects(settings, nodes, fp))
        self.agents = k8s.yaml.v2.ConfigGroup(f"{name}-agents", objs=objects, resource_prefix=name, opts=child)
        self.secret = k8s.core.v1.Secret(
            f"{name}-secrets",
            metadata=secret_manifest["metadata"],
            type="Opaque",
            string_data=string_data,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.agents]),
        )
        known = render.agent_endpoints(settings, nodes)
        # The plan reads capacity from the agents: the endpoints resolve once the agents exist.
        self.endpoints = pulumi.Output.all(self.agents.resources, self.secret.id).apply(lambda _: dict(known))
        # One certificate for the pool's agents: every node pins it.
        self.fingerprints = self.certificate.fingerprint.apply(lambda fp: {node.name: fp for node in nodes})
        self.register_outputs({"endpoints": self.endpoints, "fingerprints": self.fingerprints})

    def serve(self, cluster: Any, opts: pulumi.ResourceOptions | None = None) -> k8s.yaml.v2.ConfigGroup:
        """Create the workloads of the replicas ``cluster``'s joint plan puts on this pool's nodes (call it once,
        after the cluster; the plan itself is made when the program has declared every deployment)."""
        settings, nodes = self.settings, self.nodes

        def manifests(plan: dict | None) -> list[dict]:
            try:
                return render.render_workloads(settings, plan, nodes)
            except RenderError as error:
                raise _args_error(f"KubernetesGpuPool '{self.name}': {error}") from None

        return k8s.yaml.v2.ConfigGroup(
            f"{self.name}-workloads",
            objs=cluster.plan.apply(manifests),
            resource_prefix=f"{self.name}-workloads",
            opts=pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions(parent=self, depends_on=[self.agents, self.secret]), opts
            ),
        )


def _args_error(message: str) -> Exception:
    """A ComponentArgsError (imported here: components/__init__ imports this module, so no top-level import)."""
    from gpustack_pulumi.components.cluster import ComponentArgsError

    return ComponentArgsError(message)


def pool_settings(name: str, args: KubernetesGpuPoolArgs) -> tuple[PoolSettings, list[KubernetesNode]]:
    """Check every argument before anything is registered; errors name the argument and the fix."""
    where = f"KubernetesGpuPool '{name}'"
    if "agent_token" not in args:
        raise _args_error(f"{where}: agent_token is required (pass the cluster's token)")
    image = args.get("agent_image")
    if not isinstance(image, str) or not _IMAGE.match(image) or ":" in image.rsplit("/", 1)[-1]:
        raise _args_error(f"{where}: agent_image must be an image reference without tag, e.g. "
                                 "ghcr.io/acme/gpustack-runtime")  # fmt: skip
    nodes = [_node(where, index, raw) for index, raw in enumerate(args.get("nodes") or [])]
    if not nodes:
        raise _args_error(f"{where}: nodes is empty; declare the GPU nodes the pool uses")
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise _args_error(f"{where}: node '{node.name}' is declared twice")
        seen.add(node.name)
    namespace = args.get("namespace", "gpustack")
    if not _NAMESPACE.match(namespace):
        raise _args_error(f"{where}: namespace '{namespace}' must be a DNS label (a-z, 0-9, '-')")
    assignment = args.get("gpu_assignment", "plan")
    if assignment not in GPU_ASSIGNMENTS:
        raise _args_error(f"{where}: gpu_assignment '{assignment}' is invalid; use plan or device-plugin")
    defaults = {"agent_port": render.DEFAULT_AGENT_PORT, "engine_port": render.DEFAULT_ENGINE_PORT}
    ports = {key: args.get(key, default) for key, default in defaults.items()}
    for key, port in ports.items():
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise _args_error(f"{where}: {key} must be 1-65535")
    shm = args.get("shm_size", render.DEFAULT_SHM_SIZE)
    if not _QUANTITY.match(shm):
        raise _args_error(f"{where}: shm_size '{shm}' is not a Kubernetes quantity (e.g. 16Gi)")
    if "hf_token" in args and "hf_token_secret" in args:
        raise _args_error(f"{where}: give hf_token or hf_token_secret, not both")
    hf_token: HfTokenRef | None = None
    if "hf_token_secret" in args:
        ref = args["hf_token_secret"]
        if not isinstance(ref, dict) or not ref.get("name"):
            raise _args_error(f"{where}: hf_token_secret must be {{'name': SECRET, 'key': KEY}}")
        hf_token = HfTokenRef(ref["name"], ref.get("key", "token"))
    secret_name = render.dns_name(f"{name}-secrets")
    if "hf_token" in args:
        hf_token = HfTokenRef(secret_name, render.secret_key(HF_TOKEN_REFERENCE))
    from gpustack_pulumi import __version__

    settings = PoolSettings(
        pool=name,
        namespace=namespace,
        agent_image=image,
        agent_version=args.get("agent_version") or __version__,
        agent_port=ports["agent_port"],
        gpu_assignment=assignment,  # type: ignore[arg-type]
        engine_port=ports["engine_port"],
        shm_size=shm,
        runtime_class=args.get("runtime_class", "nvidia") or None,
        hf_token=hf_token,
        model_cache=ModelCache(pvc=args.get("model_cache_pvc"),
                               host_path=args.get("model_cache_host_path") or render.DEFAULT_CACHE_HOST_PATH),
        secret_name=secret_name,
        extra_labels=dict(args.get("labels") or {}),
        engine_images=dict(args.get("engine_images") or {}),
    )  # fmt: skip
    return settings, nodes


def _node(where: str, index: int, raw: Any) -> KubernetesNode:
    at = f"{where}: nodes[{index}]"
    if not isinstance(raw, dict):
        raise _args_error(f"{at} must be a mapping with name, gpu_product and gpus")
    unknown = sorted(set(raw) - set(KubernetesNodeArgs.__annotations__))
    if unknown:
        raise _args_error(f"{at}: unknown key(s) {', '.join(unknown)}")
    node_name = raw.get("name")
    if not isinstance(node_name, str) or not _NODE_NAME.match(node_name):
        raise _args_error(f"{at}: name must be the Kubernetes node name (lowercase, 1-63 of a-z 0-9 . -)")
    gpus = raw.get("gpus")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= 64:
        raise _args_error(f"{at} ({node_name}): gpus must be 1-64")
    if not isinstance(raw.get("gpu_product"), str) or not raw["gpu_product"]:
        raise _args_error(f"{at} ({node_name}): gpu_product is required (e.g. 'NVIDIA L40S')")
    vendor = raw.get("vendor", "nvidia")
    if vendor not in VENDORS:
        raise _args_error(f"{at} ({node_name}): vendor '{vendor}' is invalid; use nvidia or ascend")
    mig = raw.get("mig_profile")
    if mig is not None:
        if vendor != "nvidia":
            raise _args_error(f"{at} ({node_name}): mig_profile is for NVIDIA nodes")
        try:
            render.mig_memory_bytes(mig)
        except RenderError as error:
            raise _args_error(f"{at} ({node_name}): {error}") from None
    return KubernetesNode(
        name=node_name,
        gpu_product=raw["gpu_product"],
        gpus=gpus,
        vendor=vendor,
        address=raw.get("address"),
        labels=dict(raw.get("labels") or {}),
        mig_profile=mig,
    )
