"""AWS GPU node pool, pure parts: planned capacity, sizing from a plan, the boot script, the launch template,
the Auto Scaling group, security group rules, IAM documents and cost (parsed, not string-matched)."""

from __future__ import annotations

import base64
import gzip
import re
import subprocess
from pathlib import Path

import pytest
from gpustack_runtime.wire import Inventory

from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.pools.aws import cost, render
from gpustack_pulumi.pools.aws.render import PoolSpec, RenderError

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = (REPO / "runtime" / "install" / "install.sh").read_text()


def spec(**overrides) -> PoolSpec:
    types = overrides.pop("types", ["g5.xlarge"])
    base = {
        "name": "gpu",
        "region": "us-east-1",
        "instances": tuple(render.instance_choice(t) for t in types),
        "subnet_ids": ("subnet-a", "subnet-b"),
        "vpc_id": "vpc-1",
        "min_nodes": 0,
        "max_nodes": 4,
        "agent_cidrs": ("10.0.0.0/16",),
        "parameter_prefix": "/gpustack/proj/dev/gpu",
    }
    base.update(overrides)
    return PoolSpec(**base)


def test_planned_capacity_is_max_nodes_documents_with_catalog_gpus() -> None:
    documents = render.planned_capacity(spec(types=["g6e.12xlarge"], max_nodes=3))
    inventory = Inventory.model_validate({"nodes": documents})
    assert [node.name for node in inventory.nodes] == ["gpu-0", "gpu-1", "gpu-2"]
    node = inventory.nodes[0]
    assert len(node.devices) == 4 and node.devices[0].product == "NVIDIA L40S"
    assert (
        node.labels["gpustack.ai/pool"] == "gpu" and node.labels["node.kubernetes.io/instance-type"] == "g6e.12xlarge"
    )


def test_desired_count_is_the_planned_nodes_used_within_min_max() -> None:
    pool = spec(max_nodes=4, min_nodes=1)
    from gpustack_pulumi.placement import Deployment

    deployments = [Deployment(name="chat", model="Qwen/Qwen3-8B", replicas=2, max_model_len=8192)]
    result = plan_cluster(Inventory.model_validate({"nodes": render.planned_capacity(pool)}), deployments,
                          with_launch=False)  # fmt: skip
    assert result.ok, result.failures
    plan = result.plan.model_dump(mode="json")
    used = render.nodes_used(pool, plan)
    assert len(used) == 2  # replicas of one deployment on their own nodes
    assert render.desired_from_plan(pool, plan) == 2
    assert render.desired_from_plan(pool, {"replicas": []}) == 1  # min_nodes
    far = {"replicas": [{"deployment": "x", "placements": [{"node": "gpu-3"}]}]}
    assert render.desired_from_plan(pool, far) == 1
    five = {"replicas": [{"deployment": "x", "placements": [{"node": f"gpu-{i}"}]} for i in range(4)]}
    assert render.desired_from_plan(spec(max_nodes=4), five) == 4
    assert render.desired_from_plan(spec(max_nodes=2), far) == 0  # not this pool's node (max 2: gpu-0, gpu-1)


def test_fallbacks_must_carry_the_same_gpus() -> None:
    render.check_fallbacks([render.instance_choice("g6e.12xlarge"), render.instance_choice("g6e.24xlarge")])
    with pytest.raises(RenderError, match="carries 8× L40S"):
        render.check_fallbacks([render.instance_choice("g6e.12xlarge"), render.instance_choice("g6e.48xlarge")])
    with pytest.raises(RenderError, match="p5.48xlarge"):
        render.instance_choice("p5.48xlarg")


def test_user_data_reads_the_token_from_ssm_and_embeds_install_sh() -> None:
    text = render.render_user_data(spec(), INSTALL_SH)
    assert len(text.encode()) <= render.USER_DATA_LIMIT_BYTES
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # parses as bash
    # the embedded install.sh is byte-identical to the SSH pool's
    packed = re.search(r"^echo '?([A-Za-z0-9+/=]+)'? \| base64 -d \| gunzip", text, re.MULTILINE)
    assert packed and gzip.decompress(base64.b64decode(packed.group(1))).decode() == INSTALL_SH
    assert 'get-parameter --name "$PREFIX/agent-token" --with-decryption' in text
    assert "PREFIX=/gpustack/proj/dev/gpu" in text.splitlines()
    assert "--token-stdin" in text and "--host=0.0.0.0" in text and '--node-name="$NODE"' in text
    assert "s3cret" not in text  # nothing secret is rendered: the token never is an input here


def test_launch_template_imdsv2_encrypted_root_and_plain_network() -> None:
    pool = spec(root_volume_gib=300)
    args = render.launch_template_args(pool, image_id="resolve:ssm:/aws/x", user_data="#!/bin/bash\n",
                                       instance_profile_name="prof", security_group_id="sg-1")  # fmt: skip
    assert args["metadata_options"] == {"http_endpoint": "enabled", "http_tokens": "required",
                                        "http_put_response_hop_limit": 2,
                                        "instance_metadata_tags": "enabled"}  # fmt: skip
    (root,) = args["block_device_mappings"]
    assert root["device_name"] == "/dev/sda1"
    assert root["ebs"] == {"volume_size": 300, "volume_type": "gp3", "encrypted": "true",
                           "delete_on_termination": "true"}  # fmt: skip
    assert base64.b64decode(args["user_data"]).decode() == "#!/bin/bash\n"
    assert args["vpc_security_group_ids"] == ["sg-1"] and "network_interfaces" not in args
    assert "placement" not in args and "instance_market_options" not in args


def test_efa_types_get_efa_interfaces_per_card_and_a_placement_group() -> None:
    pool = spec(types=["p5.48xlarge"])
    assert pool.efa
    args = render.launch_template_args(pool, image_id="ami-1", user_data="x", instance_profile_name="p",
                                       security_group_id="sg-1", placement_group_name="pg")  # fmt: skip
    interfaces = args["network_interfaces"]
    assert len(interfaces) == 32 and "vpc_security_group_ids" not in args
    assert interfaces[0]["interface_type"] == "efa" and interfaces[0]["device_index"] == 0
    assert all(i["interface_type"] == "efa-only" and i["device_index"] == 1 for i in interfaces[1:])
    assert [i["network_card_index"] for i in interfaces] == list(range(32))
    assert args["placement"] == {"group_name": "pg"}
    rules = render.security_group_rules(pool)
    assert {"direction": "ingress", "ip_protocol": "-1", "self": True, "description": "EFA, within the group"} in rules
    assert not spec(types=["g5.12xlarge"]).efa


def test_security_group_is_closed_but_for_the_named_cidrs() -> None:
    rules = render.security_group_rules(spec(agent_cidrs=("10.0.0.0/16", "192.168.1.0/24")))
    ingress = [r for r in rules if r["direction"] == "ingress"]
    open_to = {(r["from_port"], r.get("cidr_ipv4")) for r in ingress if "cidr_ipv4" in r}
    assert open_to == {(10150, "10.0.0.0/16"), (10150, "192.168.1.0/24")}
    assert all(r.get("cidr_ipv4") != "0.0.0.0/0" for r in ingress)
    assert [r for r in ingress if r.get("self")] == [
        {"direction": "ingress", "ip_protocol": "tcp", "from_port": 40000, "to_port": 40063, "self": True,
         "description": "engines, from the pool's nodes"}]  # fmt: skip


def test_iam_documents_are_least_privilege() -> None:
    pool = spec(kms_key_arn="arn:aws:kms:us-east-1:1:key/k")
    trust = render.assume_role_policy()
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                   "Action": "sts:AssumeRole"}]  # fmt: skip
    statements = {s["Sid"]: s for s in render.node_policy(pool)["Statement"]}
    assert statements["ReadAgentToken"]["Action"] == ["ssm:GetParameter"]
    assert statements["ReadAgentToken"]["Resource"] == [
        "arn:aws:ssm:us-east-1:*:parameter/gpustack/proj/dev/gpu/agent-token"
    ]
    writable = statements["NodeSlotsAndFingerprints"]["Resource"]
    assert all(r.startswith("arn:aws:ssm:us-east-1:*:parameter/gpustack/proj/dev/gpu/") for r in writable)
    assert "agent-token" not in " ".join(writable)  # nodes cannot overwrite the token
    tag = statements["TagItself"]
    assert tag["Condition"]["StringEquals"] == {"aws:ResourceTag/gpustack:pool": "gpu"}
    assert statements["DecryptToken"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}
    }
    actions = {a for s in statements.values() for a in s["Action"]}
    assert not any(a.endswith("*") for a in actions)


def test_group_markets_fallbacks_and_reservations() -> None:
    plain = render.autoscaling_group_args(spec(), launch_template_id="lt-1", desired=2)
    assert plain["launch_template"] == {"id": "lt-1", "version": "$Latest"} and "mixed_instances_policy" not in plain
    assert (plain["min_size"], plain["max_size"], plain["desired_capacity"]) == (0, 4, 2)
    assert plain["vpc_zone_identifiers"] == ["subnet-a", "subnet-b"]
    spot = render.autoscaling_group_args(spec(market="spot", types=["g6e.12xlarge", "g6e.24xlarge"]),
                                         launch_template_id="lt-1", desired=1)  # fmt: skip
    policy = spot["mixed_instances_policy"]
    assert [o["instance_type"] for o in policy["launch_template"]["overrides"]] == ["g6e.12xlarge", "g6e.24xlarge"]
    assert policy["instances_distribution"]["on_demand_percentage_above_base_capacity"] == 0
    assert spot["capacity_rebalance"] is True
    reserved = spec(market="capacity-block", types=["p5.48xlarge"], capacity_reservation_id="cr-1")
    group = render.autoscaling_group_args(reserved, launch_template_id="lt", desired=1)
    assert group["capacity_reservation_specification"]["capacity_reservation_target"] == {
        "capacity_reservation_ids": ["cr-1"]}  # fmt: skip
    template = render.launch_template_args(reserved, image_id="a", user_data="x", instance_profile_name="p",
                                           security_group_id="s")  # fmt: skip
    assert template["instance_market_options"] == {"market_type": "capacity-block"}


def test_root_volume_sized_for_weights() -> None:
    assert render.root_volume_gib([16 * 2**30]) == 130  # 75 + 32 + 20 = 127 -> 130
    assert render.root_volume_gib([]) == 100


def test_cost_per_pool_and_per_deployment() -> None:
    pool = spec(max_nodes=4)
    plan = {"replicas": [
        {"deployment": "chat", "placements": [{"node": "gpu-0", "device_indices": [0]}]},
        {"deployment": "chat", "placements": [{"node": "gpu-1", "device_indices": [0]}]},
    ]}  # fmt: skip
    price = cost.price_of(pool)
    assert price is not None and price.per_hour == 1.006 and price.source.startswith("https://")
    assert cost.pool_cost(pool, plan).per_hour == 2.012
    assert cost.deployment_costs([pool], plan) == {"chat": 2.012}
    text = cost.render_cost_markdown([pool], plan)
    assert "| gpu | g5.xlarge | on-demand | 2 (0–4) | gpu-0, gpu-1 | 1.006 | 2.01 |" in text
    assert "Total: **$2.01/h**" in text
    unpriced = spec(types=["g6.xlarge"])
    assert cost.price_of(unpriced) is None and "no price for gpu" in cost.render_cost_markdown([unpriced], plan)
