# No `from __future__ import annotations`: Pulumi reads component annotations at runtime (see components/__init__.py).
"""AwsGpuNodePool: EC2 GPU instances in an Auto Scaling group, each running the gpustack agent.

Children (names prefixed with the pool's name; every value rendered by :mod:`gpustack_pulumi.pools.aws.render`):

- ``{name}-agent-token`` (``ssm.Parameter``, SecureString): the agents' bearer token; instances read it at boot.
- ``{name}-node-role`` + ``{name}-ssm-core`` + ``{name}-node-policy`` + ``{name}-node-profile``: the instance
  role (Session Manager, read its token, claim a node slot, publish its fingerprint, tag itself).
- ``{name}-sg`` and ``{name}-sg-<n>`` rules: closed by default, the agent port only from ``agent_cidrs``.
- ``{name}-pg`` (``ec2.PlacementGroup``, cluster) for EFA types (p4d, p5, p5e, p5en, p6).
- ``{name}-lt`` (``ec2.LaunchTemplate``): the GPU AMI (``resolve:ssm:`` of its public parameter, resolved at
  each launch, or ``ami_id``), IMDSv2 required with hop limit 2, encrypted gp3 root volume, the boot script.
- ``size_from(cluster)`` adds ``{name}-capacity`` (quota/offering check at preview), ``{name}-asg``
  (``autoscaling.Group``, desired capacity from the plan) and ``{name}-agents`` (waits for the agents; its
  outputs are the pool's ``endpoints`` and ``fingerprints``).

**How the plan sizes the pool.** ``planned_capacity`` holds ``max_nodes`` documents ``<pool>-0 … <pool>-N-1``
(the catalog's GPUs of the instance type). ``pool.size_from(cluster)`` places the cluster's deployments on the
planned capacity with ``plan_cluster`` — the function the cluster's plan runs — once the program has declared
them, and sets the group's desired capacity to the number of planned nodes replicas use (within min/max).
It cannot read the ``ClusterPlan`` resource's output: that plan reads the pool's agents, which exist only once
the group does. Instances claim node names ``<pool>-0..desired-1`` at boot (SSM parameters ``<prefix>/slots/<n>``);
planned nodes are identical, so the cluster's plan on the live agents (at ``up``, once they serve) places the
same replicas on as many nodes, possibly under other slot numbers than the preview's; later ``up``s are sticky.
"""

import asyncio
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pulumi

from gpustack_pulumi.components.program_end import call_when_program_ends
from gpustack_pulumi.errors import ComponentArgsError
from gpustack_pulumi.pools.aws import render
from gpustack_pulumi.pools.aws.render import PoolSpec, RenderError

MARKETS = ("on-demand", "spot", "mixed", "capacity-block")


class AwsGpuNodePoolArgs(TypedDict):
    instance_type: str | list[str]
    """A catalog instance type ('g6e.12xlarge'), or an ordered list of fallbacks carrying the same GPUs."""
    region: str
    """The AWS region (also where quotas and offerings are checked)."""
    vpc_id: str
    subnet_ids: list[str]
    """Subnets the group spreads over (one AZ each, typically); a capacity block needs its AZ's subnet."""
    agent_token: pulumi.Input[str]
    """The agents' bearer token (a secret; usually the cluster's). Stored as an SSM SecureString."""
    agent_cidrs: list[str]
    """CIDRs allowed to reach the agents' port (where Pulumi and the gateway's clients run). No default."""
    max_nodes: int
    min_nodes: NotRequired[int]
    """Instances kept even when the plan needs fewer (default 0)."""
    market: NotRequired[str]
    """on-demand (default), spot, mixed (``on_demand_base`` on-demand, spot above) or capacity-block."""
    on_demand_base: NotRequired[int]
    capacity_reservation_id: NotRequired[str]
    """An On-Demand Capacity Reservation or Capacity Block (``cr-…``) to launch into."""
    engine_cidrs: NotRequired[list[str]]
    """CIDRs allowed to reach the engines' ports directly (default: only the pool's own nodes)."""
    agent_port: NotRequired[int]
    ami_id: NotRequired[str]
    """A fixed AMI instead of the public SSM parameter."""
    ami_parameter: NotRequired[str]
    """The SSM parameter of the AMI (default: DLAMI Base OSS NVIDIA driver GPU, Ubuntu 22.04)."""
    root_device_name: NotRequired[str]
    root_volume_gib: NotRequired[int]
    """Root volume size; default from ``models`` (image + 2× weights + 20 GiB), else 256."""
    models: NotRequired[list[str]]
    """Models the pool serves (catalog ids or config paths), to size the root volume for their weights."""
    kms_key_arn: NotRequired[str]
    """A customer KMS key for the token parameter and the root volume (default: AWS managed keys)."""
    agent_version: NotRequired[str]
    agent_source: NotRequired[str]
    pip_args: NotRequired[list[str]]
    labels: NotRequired[dict[str, str]]
    public_endpoints: NotRequired[bool]
    """Reach the agents at their public IPs (default: private IPs: run Pulumi inside the VPC or over a VPN)."""
    price_per_hour: NotRequired[float]
    """$/h per instance for the cost report, when the catalog has no price (or yours differs)."""
    install_scripts_dir: NotRequired[str]
    agents_timeout_s: NotRequired[float]


def _install_script(args: AwsGpuNodePoolArgs) -> str:
    from gpustack_pulumi.pools.ssh.component import default_install_scripts_dir

    path = Path(args.get("install_scripts_dir") or default_install_scripts_dir()) / "install.sh"
    if not path.is_file():
        raise ComponentArgsError(
            f"AwsGpuNodePool: {path} is missing; set install_scripts_dir to a checkout's runtime/install"
        )
    return path.read_text()


def _weights(models: list[str]) -> list[int]:
    from gpustack_pulumi.analysis import analyze

    sizes = []
    for model in models:
        sizes.append(int(analyze(model).weight_bytes))
    return sizes


def pool_spec(name: str, args: AwsGpuNodePoolArgs, *, parameter_prefix: str | None = None) -> PoolSpec:
    """Check every argument before anything is registered; errors name the argument and the fix."""
    where = f"AwsGpuNodePool '{name}'"
    try:
        render.check_pool_name(name)
        raw_types = args.get("instance_type")
        types = [raw_types] if isinstance(raw_types, str) else list(raw_types or [])
        if not types:
            raise RenderError("instance_type is required (a catalog type such as g6e.12xlarge, or a list)")
        instances = tuple(render.instance_choice(t) for t in types)
        render.check_fallbacks(instances)
        for choice in instances:
            _ = choice.quota_class
    except RenderError as error:
        raise ComponentArgsError(f"{where}: {error}") from None
    for key in ("region", "vpc_id", "agent_token"):
        if not args.get(key):
            raise ComponentArgsError(f"{where}: {key} is required")
    subnets = list(args.get("subnet_ids") or [])
    if not subnets:
        raise ComponentArgsError(f"{where}: subnet_ids is empty; give the subnets the group may launch in")
    cidrs = list(args.get("agent_cidrs") or [])
    if not cidrs:
        raise ComponentArgsError(
            f"{where}: agent_cidrs is empty: name the networks Pulumi reaches the agents from "
            "(the pool opens nothing by default)"
        )
    import ipaddress

    for cidr in [*cidrs, *(args.get("engine_cidrs") or [])]:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            raise ComponentArgsError(f"{where}: '{cidr}' is not a CIDR such as 10.0.0.0/16") from None
    max_nodes, min_nodes = args.get("max_nodes"), args.get("min_nodes", 0)
    if not isinstance(max_nodes, int) or not 1 <= max_nodes <= 64:
        raise ComponentArgsError(f"{where}: max_nodes must be 1-64")
    if not isinstance(min_nodes, int) or not 0 <= min_nodes <= max_nodes:
        raise ComponentArgsError(f"{where}: min_nodes must be 0..max_nodes ({max_nodes})")
    market = args.get("market", "on-demand")
    if market not in MARKETS:
        raise ComponentArgsError(f"{where}: market '{market}' is invalid; use {', '.join(MARKETS)}")
    reservation = args.get("capacity_reservation_id")
    if market == "capacity-block" and not reservation:
        raise ComponentArgsError(f"{where}: market capacity-block needs capacity_reservation_id (the block's cr-…)")
    if reservation and market in ("spot", "mixed"):
        raise ComponentArgsError(f"{where}: a capacity reservation cannot be used with market {market}")
    if market == "capacity-block" and len(instances) > 1:
        raise ComponentArgsError(f"{where}: a capacity block is for one instance type; give one instance_type")
    if "root_volume_gib" in args:
        volume = args["root_volume_gib"]
        if not isinstance(volume, int) or volume < render.AMI_SNAPSHOT_GIB:
            raise ComponentArgsError(f"{where}: root_volume_gib must be at least {render.AMI_SNAPSHOT_GIB} (the image)")
    elif args.get("models"):
        volume = render.root_volume_gib(_weights(list(args["models"])))
    else:
        volume = render.DEFAULT_ROOT_VOLUME_GIB
    from gpustack_pulumi import __version__

    prefix = parameter_prefix or f"/gpustack/{pulumi.get_project()}/{pulumi.get_stack()}/{name}"
    return PoolSpec(
        name=name,
        region=args["region"],
        instances=instances,
        subnet_ids=tuple(subnets),
        vpc_id=args["vpc_id"],
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        market=market,  # type: ignore[arg-type]
        on_demand_base=int(args.get("on_demand_base", 0)),
        capacity_reservation_id=reservation,
        agent_cidrs=tuple(cidrs),
        engine_cidrs=tuple(args.get("engine_cidrs") or ()),
        agent_port=int(args.get("agent_port", render.DEFAULT_AGENT_PORT)),
        ami_id=args.get("ami_id"),
        ami_parameter=args.get("ami_parameter") or render.DEFAULT_AMI_PARAMETER,
        root_device_name=args.get("root_device_name") or render.DEFAULT_ROOT_DEVICE,
        root_volume_gib=volume,
        kms_key_arn=args.get("kms_key_arn"),
        agent_version=args.get("agent_version") or __version__,
        agent_source=args.get("agent_source"),
        pip_args=tuple(args.get("pip_args") or ()),
        labels=dict(args.get("labels") or {}),
        parameter_prefix=prefix,
        price_per_hour=args.get("price_per_hour"),
    )


class AwsPoolCapacity(pulumi.dynamic.Resource, module="gpustack", name="AwsPoolCapacity"):
    """Fails ``check`` (so the preview) when the pool's quotas or AZ offerings cannot hold what the plan needs."""

    report: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        from gpustack_pulumi.pools.aws.provider import AwsPoolCapacityProvider

        super().__init__(AwsPoolCapacityProvider(), name, {**props, "report": None}, opts)


class AwsPoolAgents(pulumi.dynamic.Resource, module="gpustack", name="AwsPoolAgents"):
    """The pool's serving agents, discovered by tag once the group has launched them."""

    endpoints: pulumi.Output[dict]
    fingerprints: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        from gpustack_pulumi.pools.aws.provider import AwsPoolAgentsProvider

        super().__init__(AwsPoolAgentsProvider(), name, {**props, "endpoints": None, "fingerprints": None}, opts)


class AwsGpuNodePool(pulumi.ComponentResource):
    """EC2 GPU instances (an Auto Scaling group sized by the cluster's plan), each running the gpustack agent.

    Call ``pool.size_from(cluster)`` once, after the ``GpuCluster`` that uses the pool: it creates the group with
    the desired capacity the plan needs. Until then ``endpoints`` waits.
    """

    endpoints: pulumi.Output[dict[str, str]]
    """Node name → ``https://<private or public IP>:<agent_port>`` of every serving agent."""
    fingerprints: pulumi.Output[dict[str, str]]
    """Node name → its agent's TLS certificate fingerprint (published by the instance at boot)."""
    planned_capacity: list[dict] | None
    """``max_nodes`` capacity documents ``<pool>-0 … <pool>-N-1`` with the catalog's GPUs."""
    desired: pulumi.Output[int]
    """Instances the plan needs (set by ``size_from``)."""
    sizing_plan: pulumi.Output[dict]
    """The Plan (JSON) ``size_from`` sized the group by."""

    def __init__(self, name: str, args: AwsGpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        spec = pool_spec(name, args)
        try:
            self.planned_capacity = render.planned_capacity(spec)
            user_data = render.render_user_data(spec, _install_script(args))
        except RenderError as error:
            raise ComponentArgsError(f"AwsGpuNodePool '{name}': {error}") from None
        super().__init__("gpustack:index:AwsGpuNodePool", name, {}, opts)
        import pulumi_aws as aws  # large: imported only when an AWS pool is declared

        self.name = name
        self.spec = spec
        self._timeout = float(args.get("agents_timeout_s") or 0) or None
        self._public = bool(args.get("public_endpoints"))
        child = pulumi.ResourceOptions(parent=self)
        self.token_parameter = aws.ssm.Parameter(
            f"{name}-agent-token",
            name=spec.token_parameter,
            type="SecureString",
            value=pulumi.Output.secret(args["agent_token"]),
            key_id=spec.kms_key_arn,
            description=f"gpustack agent token of pool {name}",
            tags=render.resource_tags(spec),
            opts=child,
        )
        self.role = aws.iam.Role(
            f"{name}-node-role",
            assume_role_policy=render.policy_json(render.assume_role_policy()),
            tags=render.resource_tags(spec),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm-core", role=self.role.name, policy_arn=render.MANAGED_SSM_CORE, opts=child
        )
        self.node_policy = aws.iam.RolePolicy(
            f"{name}-node-policy", role=self.role.id, policy=render.policy_json(render.node_policy(spec)), opts=child
        )
        self.profile = aws.iam.InstanceProfile(f"{name}-node-profile", role=self.role.name, opts=child)
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=spec.vpc_id,
            description=f"gpustack pool {name}: agent port from named CIDRs only",
            tags=render.resource_tags(spec),
            opts=child,
        )
        for index, rule in enumerate(render.security_group_rules(spec)):
            rule = dict(rule)
            direction = rule.pop("direction")
            if rule.pop("self", False):
                rule["referenced_security_group_id"] = self.security_group.id
            kind = aws.vpc.SecurityGroupIngressRule if direction == "ingress" else aws.vpc.SecurityGroupEgressRule
            kind(f"{name}-sg-{index}", security_group_id=self.security_group.id, opts=child, **rule)
        self.placement_group = (
            aws.ec2.PlacementGroup(f"{name}-pg", strategy="cluster", tags=render.resource_tags(spec), opts=child)
            if spec.efa
            else None
        )
        image = spec.ami_id or f"resolve:ssm:{spec.ami_parameter}"
        self.launch_template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            **render.launch_template_args(
                spec,
                image_id=image,
                user_data=user_data,
                instance_profile_name=self.profile.name,
                security_group_id=self.security_group.id,
                placement_group_name=self.placement_group.name if self.placement_group else None,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.token_parameter, self.node_policy]),
        )
        loop = asyncio.get_event_loop()
        self._agents_future: asyncio.Future[Any] = loop.create_future()
        self._desired_future: asyncio.Future[Any] = loop.create_future()
        self._plan_future: asyncio.Future[Any] = loop.create_future()
        self.endpoints = pulumi.Output.from_input(self._agents_future).apply(lambda agents: agents.endpoints)
        self.fingerprints = pulumi.Output.from_input(self._agents_future).apply(lambda agents: agents.fingerprints)
        self.desired = pulumi.Output.from_input(self._desired_future).apply(lambda desired: desired)
        self.sizing_plan = pulumi.Output.from_input(self._plan_future).apply(lambda plan: plan)
        self.group: Any = None
        call_when_program_ends(self._check_sized)
        self.register_outputs({"endpoints": self.endpoints, "fingerprints": self.fingerprints})

    def size_from(self, cluster: Any, other_pools: list[Any] | None = None) -> Any:
        """Create the Auto Scaling group with the desired capacity the cluster's deployments need on the planned
        capacity (this pool's and ``other_pools``', which share the placement), the capacity check, and the
        agents' discovery. Returns the group."""
        import pulumi_aws as aws

        if self.group is not None:
            raise ComponentArgsError(f"AwsGpuNodePool '{self.name}': size_from was already called")
        spec = self.spec
        # The cluster's other pools share the placement (``other_pools`` adds pools outside it).
        pools: list[Any] = []
        for pool in [self, *getattr(cluster, "pools", []), *(other_pools or [])]:
            if not any(pool is seen for seen in pools):
                pools.append(pool)
        documents = [doc for pool in pools for doc in (pool.planned_capacity or [])]
        strategy = getattr(cluster, "strategy", "binpack")
        prefix = f"{pulumi.get_project()}/{pulumi.get_stack()}/"
        sizing = _cluster_deployments(cluster).apply(
            lambda deployments: _sizing_plan(documents, deployments, prefix, strategy)
        )
        desired = sizing.apply(lambda plan: render.desired_from_plan(spec, plan))
        child = pulumi.ResourceOptions(parent=self)
        capacity = AwsPoolCapacity(
            f"{self.name}-capacity",
            {
                "pool": self.name,
                "region": spec.region,
                "instance_types": [c.instance_type for c in spec.instances],
                "vcpus_per_instance": spec.primary.vcpus,
                "quota_class": spec.primary.quota_class,
                "market": "on-demand" if spec.market == "capacity-block" else spec.market,
                "needed": desired,
                "subnet_ids": list(spec.subnet_ids),
                "on_demand_base": spec.on_demand_base,
            },
            child,
        )
        self.group = aws.autoscaling.Group(
            f"{self.name}-asg",
            **render.autoscaling_group_args(
                spec,
                launch_template_id=self.launch_template.id,
                desired=desired,
                placement_group_name=self.placement_group.name if self.placement_group else None,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[capacity]),
        )
        props: dict[str, Any] = {
            "pool": self.name,
            "region": spec.region,
            "parameter_prefix": spec.parameter_prefix,
            "agent_port": spec.agent_port,
            "desired": desired,
            "group": self.group.name,
            "launch_template_version": self.launch_template.latest_version,
            "public": self._public,
        }
        if self._timeout:
            props["timeout_s"] = self._timeout
        agents = AwsPoolAgents(
            f"{self.name}-agents", props, pulumi.ResourceOptions(parent=self, depends_on=[self.group])
        )
        self._agents_future.set_result(agents)
        self._desired_future.set_result(desired)
        self._plan_future.set_result(sizing)
        return self.group

    def _check_sized(self) -> None:
        if not self._agents_future.done():
            self._agents_future.set_exception(
                ComponentArgsError(
                    f"AwsGpuNodePool '{self.name}': call pool.size_from(cluster) after creating the cluster; "
                    "without it the pool has no Auto Scaling group and no agents"
                )
            )
            for future in (self._desired_future, self._plan_future):
                future.set_exception(ComponentArgsError(f"AwsGpuNodePool '{self.name}': size_from was not called"))


def _cluster_deployments(cluster: Any) -> pulumi.Output[list]:
    """The deployments the cluster plans (JSON), once the program has declared them all."""
    exposed = getattr(cluster, "deployments", None)
    if exposed is None:
        raise ComponentArgsError("AwsGpuNodePool.size_from needs a GpuCluster")
    return exposed


def _sizing_plan(documents: list[dict], deployments: list[dict], owner_prefix: str, strategy: str = "binpack") -> dict:
    """The Plan (JSON) of ``deployments`` on the planned capacity, as the cluster's plan makes it before agents
    exist (``with_launch`` off: only where replicas go matters here)."""
    from gpustack_runtime.wire import Inventory

    from gpustack_pulumi.cluster_plan import plan_cluster
    from gpustack_pulumi.placement import Deployment

    result = plan_cluster(
        Inventory.model_validate({"nodes": documents}),
        [Deployment.model_validate(d) for d in deployments or []],
        owner_prefix=owner_prefix,
        strategy="spread" if strategy == "spread" else "binpack",
        with_launch=False,
    )
    return result.plan.model_dump(mode="json")
