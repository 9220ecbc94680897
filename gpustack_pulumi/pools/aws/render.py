"""What an AWS GPU node pool is made of, as plain data: PURE functions (no boto3, no Pulumi, no network).

``AwsGpuNodePool`` (component.py) validates its arguments into a :class:`PoolSpec`, then hands the dicts these
functions return to pulumi_aws (keyword arguments with pulumi_aws 7.x names); the tests parse the same dicts.

- :func:`planned_capacity`: the capacity documents of the pool's ``max_nodes`` nodes ``<pool>-0 … <pool>-N-1``
  (GPUs from the catalog), so the cluster's plan places before any instance exists.
- :func:`desired_from_plan`: how many instances the plan needs: the number of the pool's planned nodes replicas
  use, within ``[min_nodes, max_nodes]`` (instances claim the node names ``<pool>-0..desired-1`` at boot).
- :func:`render_user_data`: the boot script (bash). It reads the token from SSM Parameter Store (SecureString,
  never in user data), claims a node slot, runs the SSH pool's own ``install.sh`` (embedded, gzip+base64) and
  publishes the agent's TLS fingerprint to SSM and as an instance tag.
- :func:`launch_template_args`, :func:`autoscaling_group_args`, :func:`security_group_rules`,
  :func:`assume_role_policy`, :func:`node_policy`: the EC2 launch template, the Auto Scaling group, the rules
  of the pool's security group and the IAM documents of its instance role.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gpustack_pulumi.pools.ssh.install import AgentLayout

Market = Literal["on-demand", "spot", "mixed", "capacity-block"]

DEFAULT_AGENT_PORT = 10150
DEFAULT_ENGINE_PORTS = (40000, 40063)
"""install.sh's default --port-range: engines listen there; the gateway on one node calls engines on others."""
DEFAULT_AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
"""DLAMI Base OSS NVIDIA driver, Ubuntu 22.04: driver, CUDA, EFA, AWS CLI v2 and python3 in the image."""
DEFAULT_ROOT_DEVICE = "/dev/sda1"
"""The root device of the Ubuntu DLAMIs (Amazon Linux 2023 images use /dev/xvda: set root_device_name)."""
AMI_SNAPSHOT_GIB = 75
"""The DLAMI root snapshot is about 75 GiB (shared reference notes, [I]); the volume may not be smaller."""
DEFAULT_ROOT_VOLUME_GIB = 256
"""Without model sizes: SkyPilot's default disk (256 GB), room for the image plus a few mid-size models."""
IMDS_HOP_LIMIT = 2
"""IMDSv2 tokens must reach containers on the node (one extra hop), as AL2023 images default to."""
USER_DATA_LIMIT_BYTES = 16 * 1024
"""EC2 user data is limited to 16 KB (raw, before base64)."""
EFA_FAMILIES = ("p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "p6-b300")
"""Families whose 48xlarge/24xlarge sizes get a cluster placement group and EFA interfaces."""
MAX_EFA_INTERFACES = {
    "p4d.24xlarge": 4,
    "p4de.24xlarge": 4,
    "p5.48xlarge": 32,
    "p5e.48xlarge": 32,
    "p5en.48xlarge": 16,
    "p6-b200.48xlarge": 8,
    "p6-b300.48xlarge": 16,
}
"""``NetworkInfo.EfaInfo.MaximumEfaInterfaces`` (moto's DescribeInstanceTypes snapshot; reference notes §2):
one network card each, card 0 ENA+EFA, the others ``efa-only``."""
MANAGED_SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
"""Session Manager access (no SSH key, no port 22) and SSM agent registration."""
TAG_POOL = "gpustack:pool"
TAG_NODE = "gpustack:node"
TAG_FINGERPRINT = "gpustack:fingerprint"
SLOT_CLAIM_TRIES = 3

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class RenderError(ValueError):
    """A pool argument that cannot be rendered; the message names it."""


@dataclass(frozen=True)
class InstanceChoice:
    """One instance type of the pool, with its catalog facts."""

    instance_type: str
    family: str
    gpu: str
    gpu_count: int
    vcpus: int

    @property
    def quota_class(self) -> Literal["G", "P"]:
        """The EC2 vCPU quota class the type counts against: G and VT (g*, vt*) or P (p*)."""
        first = self.family[0]
        if first in ("g", "v"):
            return "G"
        if first == "p":
            return "P"
        raise RenderError(f"instance type {self.instance_type} is in neither the G/VT nor the P quota class")

    @property
    def efa_interfaces(self) -> int:
        return MAX_EFA_INTERFACES.get(self.instance_type, 0) if self.family in EFA_FAMILIES else 0


@dataclass(frozen=True)
class PoolSpec:
    """A validated pool (see ``AwsGpuNodePool`` for each argument's meaning)."""

    name: str
    region: str
    instances: tuple[InstanceChoice, ...]
    subnet_ids: tuple[str, ...]
    vpc_id: str
    min_nodes: int = 0
    max_nodes: int = 1
    market: Market = "on-demand"
    on_demand_base: int = 0
    """Mixed market: this many on-demand instances first, spot above."""
    capacity_reservation_id: str | None = None
    agent_cidrs: tuple[str, ...] = ()
    engine_cidrs: tuple[str, ...] = ()
    agent_port: int = DEFAULT_AGENT_PORT
    engine_ports: tuple[int, int] = DEFAULT_ENGINE_PORTS
    ami_id: str | None = None
    ami_parameter: str = DEFAULT_AMI_PARAMETER
    root_device_name: str = DEFAULT_ROOT_DEVICE
    root_volume_gib: int = DEFAULT_ROOT_VOLUME_GIB
    kms_key_arn: str | None = None
    agent_version: str = "0.1.0"
    agent_source: str | None = None
    pip_args: tuple[str, ...] = ()
    python: str = "python3"
    labels: Mapping[str, str] = field(default_factory=dict)
    parameter_prefix: str = "/gpustack/pool"
    """SSM path of the pool: ``<prefix>/agent-token``, ``<prefix>/slots/<n>``, ``<prefix>/nodes/<node>/…``."""
    price_per_hour: float | None = None

    @property
    def primary(self) -> InstanceChoice:
        return self.instances[0]

    @property
    def token_parameter(self) -> str:
        return f"{self.parameter_prefix}/agent-token"

    @property
    def efa(self) -> bool:
        return self.primary.efa_interfaces > 0

    def node_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    @property
    def node_names(self) -> list[str]:
        return [self.node_name(index) for index in range(self.max_nodes)]


def check_pool_name(name: str) -> str:
    if not _NAME.match(name):
        raise RenderError(f"pool name '{name}' must be 1-32 lowercase letters, digits or '-' (it names nodes)")
    return name


def instance_choice(instance_type: str) -> InstanceChoice:
    """The catalog facts of ``instance_type`` (RenderError naming close matches when unknown)."""
    from gpustack_pulumi.catalog import aws_instance
    from gpustack_pulumi.catalog.errors import UnknownInstanceTypeError

    try:
        entry = aws_instance(instance_type)
    except UnknownInstanceTypeError as error:
        raise RenderError(str(error)) from None
    return InstanceChoice(entry.instance_type, entry.family, entry.gpu, entry.gpu_count, entry.vcpus)


def check_fallbacks(instances: Sequence[InstanceChoice]) -> None:
    """Fallback types must carry the primary's GPUs (model and count): the plan placed on those."""
    primary = instances[0]
    for other in instances[1:]:
        if (other.gpu, other.gpu_count) != (primary.gpu, primary.gpu_count):
            raise RenderError(
                f"fallback {other.instance_type} carries {other.gpu_count}× {other.gpu}, but {primary.instance_type}"
                f" carries {primary.gpu_count}× {primary.gpu}: a pool's nodes must all carry the GPUs the plan places"
                " on; put other GPUs in another pool"
            )


# ----- planned capacity and sizing -------------------------------------------------------------------------------


def node_labels(spec: PoolSpec) -> dict[str, str]:
    """Labels every node of the pool reports (its agent gets them with --labels), and its planned documents."""
    return {
        **dict(spec.labels),
        "gpustack.ai/pool": spec.name,
        "gpustack.ai/runner": "aws",
        "node.kubernetes.io/instance-type": spec.primary.instance_type,
        "topology.kubernetes.io/region": spec.region,
    }


def planned_capacity(spec: PoolSpec) -> list[dict]:
    """Capacity documents (``gpustack_runtime.wire.CapacityDocument`` as JSON) of every node the pool may
    create, ``<pool>-0 … <pool>-(max_nodes-1)``, with the catalog's GPUs of the primary instance type."""
    from gpustack_pulumi.catalog import gpu

    gpu_spec = gpu(spec.primary.gpu)
    labels = node_labels(spec)
    documents = []
    for node in spec.node_names:
        devices = [
            {
                "index": index,
                "uuid": f"planned-{node}-{index}",
                "vendor": gpu_spec.vendor,
                "product": gpu_spec.names[0],
                "memory_total": gpu_spec.memory_bytes,
                "memory_used": 0,
                "memory_allocated": 0,
                "compute_capability": gpu_spec.compute_capability,
            }
            for index in range(spec.primary.gpu_count)
        ]
        documents.append({"name": node, "labels": dict(labels), "devices": devices, "allocations": []})
    return documents


def nodes_used(spec: PoolSpec, plan: Mapping[str, Any] | None) -> list[str]:
    """The pool's planned nodes that replicas of ``plan`` (a Plan as JSON: ``replicas[].placements[].node``)
    use, in slot order."""
    names = set(spec.node_names)
    used = {
        placement.get("node")
        for replica in (plan or {}).get("replicas") or []
        for placement in replica.get("placements") or []
    }
    return sorted((node for node in used if node in names), key=lambda node: int(node.rsplit("-", 1)[1]))


def desired_from_plan(spec: PoolSpec, plan: Mapping[str, Any] | None) -> int:
    """Instances to run: how many of the pool's planned nodes replicas use, at least ``min_nodes``, at most
    ``max_nodes``. The planned nodes are identical, so which ones the plan picked does not matter: instances
    claim slots ``0..desired-1`` at boot and the cluster's plan on the live agents places on those."""
    return max(spec.min_nodes, min(spec.max_nodes, len(nodes_used(spec, plan))))


def root_volume_gib(weight_bytes: Sequence[int]) -> int:
    """Root volume for these models' weights: the image (``AMI_SNAPSHOT_GIB``) + twice the weights (the
    download cache and a converted copy, as engines keep both) + 20 GiB of logs and venvs, rounded up to 10."""
    weights_gib = sum(weight_bytes) / 2**30
    size = AMI_SNAPSHOT_GIB + 2 * weights_gib + 20
    return int(-(-size // 10) * 10)


# ----- user data ---------------------------------------------------------------------------------------------


def render_user_data(
    spec: PoolSpec,
    install_script: str,
    *,
    imds_url: str = "http://169.254.169.254",
    agent_root: str | None = None,
) -> str:
    """The instance's boot script (bash, run once by cloud-init as root).

    1. IMDSv2 (token PUT, then GETs): instance id and region.
    2. The agent token from SSM Parameter Store (``get-parameter --with-decryption``), never in user data; kept
       in a shell variable and handed to install.sh on stdin.
    3. A node slot ``<pool>-<n>``: the lowest ``n`` whose parameter ``<prefix>/slots/<n>`` it creates
       (``put-parameter`` without overwrite is atomic: one winner per slot); a slot held by an instance that is
       no longer running is taken over. Tagged ``gpustack:node``.
    4. ``install.sh`` (the SSH pool's, embedded gzip+base64) with the node name, labels, ``--host 0.0.0.0``
       (HTTPS) and ``--token-stdin``.
    5. The agent's TLS fingerprint to ``<prefix>/nodes/<node>/fingerprint`` and the ``gpustack:fingerprint`` tag:
       the pool's discovery reads it and the cluster pins it.

    ``AWS_ENDPOINT_URL`` (when set in the environment) points the AWS CLI elsewhere (tests: moto);
    ``imds_url`` is the metadata service.

    ``agent_root`` (default None: the system layout, systemd runs the agent) puts everything the script writes
    below one directory, as ``SshNodePool``'s per-host ``agent_root`` does (``AgentLayout.under``): the boot
    log, install.sh's staging copy, venv, token, TLS directory, state and unit. The unit is not loaded there
    (``--no-systemd``), so the script starts the agent as a detached process from the unit's ``ExecStart``
    and waits for ``/healthz`` (pinned to the new certificate) before it publishes the fingerprint: the SSH
    pool's own start and health-check code. For hosts without systemd and for tests, whose network-namespace
    hosts share one filesystem.
    """
    q = shlex.quote
    packed = base64.b64encode(gzip.compress(install_script.encode(), mtime=0)).decode()
    labels = ",".join(f"{key}={value}" for key, value in sorted(node_labels(spec).items()))
    layout = _layout(agent_root)
    boot_log = f"{agent_root.rstrip('/')}/var/log/gpustack-boot.log" if agent_root else "/var/log/gpustack-boot.log"
    install_words = [
        "bash",
        layout.install_script,
        *([] if layout.system else [*layout.path_flags(), "--no-systemd"]),
        f"--source={spec.agent_source or f'gpustack-runtime=={spec.agent_version}'}",
        f"--python={spec.python}",
        *[f"--pip-arg={arg}" for arg in spec.pip_args],
        "--host=0.0.0.0",
        f"--port={spec.agent_port}",
        f"--port-range={spec.engine_ports[0]}-{spec.engine_ports[1]}",
        "--devices=auto",
        f"--labels={labels}",
    ]
    install = " ".join(q(word) for word in install_words)
    log_dir = "" if layout.system else f"mkdir -p {q(boot_log.rsplit('/', 1)[0])}\n"
    start = "" if layout.system else _detached_start(spec, layout)
    script = f"""#!/bin/bash
# gpustack-agent boot script of pool {spec.name} (agent {spec.agent_version}); rendered by gpustack_pulumi.
set -euo pipefail
umask 077
{log_dir}exec > >(tee -a {q(boot_log)}) 2>&1
IMDS={q(imds_url)}
PREFIX={q(spec.parameter_prefix)}
POOL={q(spec.name)}
MAX_NODES={spec.max_nodes}
imds() {{ curl -fsS -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS/latest/meta-data/$1"; }}
IMDS_TOKEN=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/latest/api/token")
INSTANCE_ID=$(imds instance-id)
export AWS_DEFAULT_REGION=$(imds placement/region)
aws_() {{ aws --output text "$@"; }}
TOKEN=$(aws_ ssm get-parameter --name "$PREFIX/agent-token" --with-decryption --query Parameter.Value)
[[ -n $TOKEN ]] || {{ echo "gpustack-boot: empty agent token at $PREFIX/agent-token" >&2; exit 1; }}
holder_running() {{
    local state
    state=$(aws_ ec2 describe-instances --instance-ids "$1" --query 'Reservations[0].Instances[0].State.Name' \\
        2>/dev/null) || return 1
    [[ $state == pending || $state == running ]]
}}
claim_slot() {{
    local n holder
    for _ in $(seq {SLOT_CLAIM_TRIES}); do
        for n in $(seq 0 $((MAX_NODES - 1))); do
            if aws_ ssm put-parameter --name "$PREFIX/slots/$n" --type String --value "$INSTANCE_ID" \\
                >/dev/null 2>&1; then echo "$n"; return 0; fi
            holder=$(aws_ ssm get-parameter --name "$PREFIX/slots/$n" --query Parameter.Value 2>/dev/null || true)
            [[ $holder == "$INSTANCE_ID" ]] && {{ echo "$n"; return 0; }}
            if [[ -n $holder ]] && ! holder_running "$holder"; then
                aws_ ssm delete-parameter --name "$PREFIX/slots/$n" >/dev/null 2>&1 || true
                if aws_ ssm put-parameter --name "$PREFIX/slots/$n" --type String --value "$INSTANCE_ID" \\
                    >/dev/null 2>&1; then echo "$n"; return 0; fi
            fi
        done
        sleep 2
    done
    return 1
}}
SLOT=$(claim_slot) || {{ echo "gpustack-boot: every slot of $POOL (max $MAX_NODES) is held" >&2; exit 1; }}
NODE="$POOL-$SLOT"
aws_ ec2 create-tags --resources "$INSTANCE_ID" --tags "Key={TAG_NODE},Value=$NODE" "Key=Name,Value=$NODE"
mkdir -p {q(layout.staging_dir)}
echo {q(packed)} | base64 -d | gunzip > {q(layout.install_script)}
report=$(printf '%s\\n' "$TOKEN" | {install} --node-name="$NODE" --token-stdin 2>&1) ||
    {{ echo "$report" >&2; exit 1; }}
unset TOKEN
echo "$report"
{start}FINGERPRINT=$(sed -n 's/^GPUSTACK_AGENT_FINGERPRINT=//p' <<<"$report" | tail -n 1)
[[ $FINGERPRINT == sha256:* ]] || {{ echo "gpustack-boot: install.sh printed no fingerprint" >&2; exit 1; }}
aws_ ssm put-parameter --name "$PREFIX/nodes/$NODE/fingerprint" --type String --overwrite --value "$FINGERPRINT" \\
    >/dev/null
aws_ ec2 create-tags --resources "$INSTANCE_ID" --tags "Key={TAG_FINGERPRINT},Value=$FINGERPRINT"
echo "gpustack-boot: $NODE ($INSTANCE_ID) serves at https://0.0.0.0:{spec.agent_port} with $FINGERPRINT"
"""
    size = len(script.encode())
    if size > USER_DATA_LIMIT_BYTES:
        raise RenderError(f"user data is {size} bytes, over EC2's {USER_DATA_LIMIT_BYTES}")
    return script


def _layout(agent_root: str | None) -> AgentLayout:
    # Imported here: the ssh package's __init__ imports its Pulumi component.
    from gpustack_pulumi.pools.ssh.install import AgentLayout

    return AgentLayout.under(agent_root)


def _detached_start(spec: PoolSpec, layout: AgentLayout) -> str:
    """Without systemd (``agent_root``): start the agent from the unit's ExecStart as a detached process and wait
    until it answers ``/healthz`` with the certificate install.sh made, with the SSH pool's own shell code."""
    from gpustack_pulumi.pools.ssh import install as ssh_install

    q = shlex.quote
    lines = [
        f"PID_FILE={q(layout.pid_file)}",
        f"LOG_FILE={q(layout.log_file)}",
        f"ENV_FILE={q(layout.env_file)}",
        f"UNIT_FILE={q(layout.unit_dir + '/' + ssh_install.UNIT_NAME)}",
        f"TLS_DIR={q(layout.tls_dir)}",
        f"PYTHON={q(spec.python)}",
        "HEALTH_HOST=127.0.0.1",
        f"HEALTH_PORT={spec.agent_port}",
        f"HEALTH_URL=https://127.0.0.1:{spec.agent_port}/healthz",
        'mkdir -p "$(dirname "$ENV_FILE")"; touch "$ENV_FILE"',
        "changed=yes",
        f'[[ $(tail -n 1 <<<"$report") == {q(ssh_install.NOTHING_CHANGED_LINE)} ]] && changed=no',
        ssh_install.STOP_FUNCTION,
        *ssh_install.process_start_lines(False),
        ssh_install.WAIT_HEALTHY,
    ]
    return "\n".join(lines) + "\n"


# ----- EC2 and Auto Scaling ----------------------------------------------------------------------------------


def resource_tags(spec: PoolSpec) -> dict[str, str]:
    return {TAG_POOL: spec.name, "gpustack:managed-by": "gpustack-pulumi"}


def launch_template_args(
    spec: PoolSpec,
    *,
    image_id: str,
    user_data: str,
    instance_profile_name: Any,
    security_group_id: Any,
    placement_group_name: Any = None,
) -> dict[str, Any]:
    """Keyword arguments of ``aws.ec2.LaunchTemplate`` (values may be Outputs where given as such)."""
    args: dict[str, Any] = {
        "image_id": image_id,
        "instance_type": spec.primary.instance_type,
        "user_data": base64.b64encode(user_data.encode()).decode(),
        "update_default_version": True,
        "metadata_options": {
            "http_endpoint": "enabled",
            "http_tokens": "required",
            "http_put_response_hop_limit": IMDS_HOP_LIMIT,
            "instance_metadata_tags": "enabled",
        },
        "block_device_mappings": [
            {
                "device_name": spec.root_device_name,
                "ebs": {
                    "volume_size": spec.root_volume_gib,
                    "volume_type": "gp3",
                    "encrypted": "true",
                    "delete_on_termination": "true",
                    **({"kms_key_id": spec.kms_key_arn} if spec.kms_key_arn else {}),
                },
            }
        ],
        "iam_instance_profile": {"name": instance_profile_name},
        "tag_specifications": [
            {"resource_type": kind, "tags": {**resource_tags(spec), "Name": f"{spec.name}-node"}}
            for kind in ("instance", "volume")
        ],
        "tags": resource_tags(spec),
    }
    if spec.efa:
        # Card 0: ENA + EFA on device 0; every further card: device 0 efa-only. Groups per interface (no
        # vpc_security_group_ids alongside network_interfaces).
        args["network_interfaces"] = [
            {
                "device_index": 0 if card == 0 else 1,
                "network_card_index": card,
                "interface_type": "efa" if card == 0 else "efa-only",
                "security_groups": [security_group_id],
                "delete_on_termination": "true",
            }
            for card in range(spec.primary.efa_interfaces)
        ]
    else:
        args["vpc_security_group_ids"] = [security_group_id]
    if placement_group_name is not None:
        args["placement"] = {"group_name": placement_group_name}
    if spec.market == "spot":
        args["instance_market_options"] = {"market_type": "spot"}
    elif spec.market == "capacity-block":
        args["instance_market_options"] = {"market_type": "capacity-block"}
    if spec.capacity_reservation_id:
        args["capacity_reservation_specification"] = {
            "capacity_reservation_target": {"capacity_reservation_id": spec.capacity_reservation_id}
        }
    return args


def autoscaling_group_args(
    spec: PoolSpec,
    *,
    launch_template_id: Any,
    desired: Any,
    placement_group_name: Any = None,
) -> dict[str, Any]:
    """Keyword arguments of ``aws.autoscaling.Group``: across the pool's subnets, ``desired`` from the plan."""
    template = {"id": launch_template_id, "version": "$Latest"}
    args: dict[str, Any] = {
        "min_size": spec.min_nodes,
        "max_size": spec.max_nodes,
        "desired_capacity": desired,
        "vpc_zone_identifiers": list(spec.subnet_ids),
        "health_check_type": "EC2",
        "wait_for_capacity_timeout": "0",
        "tags": [
            {"key": key, "value": value, "propagate_at_launch": True}
            for key, value in sorted(resource_tags(spec).items())
        ],
    }
    several = len(spec.instances) > 1
    if spec.market in ("spot", "mixed") or several:
        distribution: dict[str, Any] = {}
        if spec.market in ("spot", "mixed"):
            base = spec.on_demand_base if spec.market == "mixed" else 0
            distribution = {
                "on_demand_base_capacity": base,
                "on_demand_percentage_above_base_capacity": 0,
                "spot_allocation_strategy": "price-capacity-optimized",
            }
            args["capacity_rebalance"] = True
        else:
            distribution = {"on_demand_allocation_strategy": "prioritized"}  # the fallbacks, in order
        args["mixed_instances_policy"] = {
            "launch_template": {
                "launch_template_specification": {"launch_template_id": launch_template_id, "version": "$Latest"},
                "overrides": [{"instance_type": choice.instance_type} for choice in spec.instances],
            },
            "instances_distribution": distribution,
        }
    else:
        args["launch_template"] = template
    if placement_group_name is not None:
        args["placement_group"] = placement_group_name
    if spec.capacity_reservation_id:
        args["capacity_reservation_specification"] = {
            "capacity_reservation_preference": "capacity-reservations-only",
            "capacity_reservation_target": {"capacity_reservation_ids": [spec.capacity_reservation_id]},
        }
    return args


def security_group_rules(spec: PoolSpec) -> list[dict[str, Any]]:
    """The pool's security group rules (``aws.vpc.SecurityGroupIngressRule``/``EgressRule`` arguments, plus
    ``direction``): closed by default. In: the agent port from each of ``agent_cidrs`` only; the engine ports
    from the group itself (the gateway calls engines on other nodes) and from ``engine_cidrs``; with EFA, all
    traffic within the group. Out: everything (packages, model downloads, AWS APIs)."""
    rules: list[dict[str, Any]] = []
    for cidr in spec.agent_cidrs:
        rules.append(
            {
                "direction": "ingress",
                "ip_protocol": "tcp",
                "from_port": spec.agent_port,
                "to_port": spec.agent_port,
                "cidr_ipv4": cidr,
                "description": "gpustack agent (HTTPS)",
            }
        )
    low, high = spec.engine_ports
    rules.append(
        {
            "direction": "ingress",
            "ip_protocol": "tcp",
            "from_port": low,
            "to_port": high,
            "self": True,
            "description": "engines, from the pool's nodes",
        }
    )
    for cidr in spec.engine_cidrs:
        rules.append(
            {
                "direction": "ingress",
                "ip_protocol": "tcp",
                "from_port": low,
                "to_port": high,
                "cidr_ipv4": cidr,
                "description": "engines",
            }
        )
    if spec.efa:
        rules.append(
            {"direction": "ingress", "ip_protocol": "-1", "self": True, "description": "EFA, within the group"}
        )
        rules.append({"direction": "egress", "ip_protocol": "-1", "self": True, "description": "EFA, within the group"})
    rules.append({"direction": "egress", "ip_protocol": "-1", "cidr_ipv4": "0.0.0.0/0", "description": "all out"})
    return rules


# ----- IAM ---------------------------------------------------------------------------------------------------


def assume_role_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }


def parameter_arn(spec: PoolSpec, path: str, account: str = "*") -> str:
    return f"arn:aws:ssm:{spec.region}:{account}:parameter{path}"


def node_policy(spec: PoolSpec, account: str = "*") -> dict[str, Any]:
    """The inline policy of the pool's instance role: read its own token, claim its slot, publish its
    fingerprint, tag itself; nothing else (Session Manager comes from ``AmazonSSMManagedInstanceCore``)."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadAgentToken",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": [parameter_arn(spec, spec.token_parameter, account)],
        },
        {
            "Sid": "NodeSlotsAndFingerprints",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:PutParameter", "ssm:DeleteParameter"],
            "Resource": [
                parameter_arn(spec, f"{spec.parameter_prefix}/slots/*", account),
                parameter_arn(spec, f"{spec.parameter_prefix}/nodes/*", account),
            ],
        },
        {
            "Sid": "TagItself",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": [f"arn:aws:ec2:{spec.region}:{account}:instance/*"],
            "Condition": {
                "StringEquals": {f"aws:ResourceTag/{TAG_POOL}": spec.name},
                "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_NODE, TAG_FINGERPRINT, "Name"]},
            },
        },
        # DescribeInstances supports no resource-level scoping: whether a slot's holder still runs.
        {"Sid": "SlotHolderState", "Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": ["*"]},
    ]
    if spec.kms_key_arn:
        statements.append(
            {
                "Sid": "DecryptToken",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [spec.kms_key_arn],
                "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{spec.region}.amazonaws.com"}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def policy_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
