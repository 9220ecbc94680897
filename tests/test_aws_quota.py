"""The AWS pool's boto3 side against moto as a real endpoint (ThreadedMotoServer on 127.0.0.1): vCPU quotas
(moto's Service Quotas knows only `vpc`, so the ec2 quota values are patched into its backend in-process), type
offerings per AZ of the pool's subnets, instance discovery by tag with fingerprints from SSM parameters, and the
capacity provider failing `check` (so the preview) with the numbers."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer
from moto.servicequotas.exceptions import NoSuchResource
from moto.servicequotas.models import ServiceQuotasBackend

from gpustack_pulumi.pools.aws import quota
from gpustack_pulumi.pools.aws.provider import AwsPoolAgentsProvider, AwsPoolCapacityProvider
from gpustack_pulumi.pools.aws.render import TAG_NODE, TAG_POOL

REGION = "us-east-1"
EC2_QUOTAS: dict[str, float] = {}


def _patched_get_service_quota(self, service_code: str, quota_code: str):  # moto lacks ec2 quotas
    if service_code == "ec2" and quota_code in EC2_QUOTAS:
        return {
            "ServiceCode": "ec2",
            "QuotaCode": quota_code,
            "QuotaName": quota_code,
            "Value": EC2_QUOTAS[quota_code],
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }
    raise NoSuchResource


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ServiceQuotasBackend, "get_service_quota", _patched_get_service_quota)
    EC2_QUOTAS.clear()
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
        for i, az in enumerate("ab")
    ]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    yield {"ec2": ec2, "ssm": boto3.client("ssm", region_name=REGION), "subnets": subnets, "image": image}
    ids = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)


def _news(subnets: list[str], needed: int, **overrides) -> dict:
    return {
        "pool": "gpu",
        "region": REGION,
        "instance_types": ["g5.xlarge"],
        "vcpus_per_instance": 4,
        "quota_class": "G",
        "market": "on-demand",
        "needed": needed,
        "subnet_ids": subnets,
        **overrides,
    }


def test_enough_quota_passes_with_offerings_per_az(aws) -> None:
    EC2_QUOTAS["L-DB2E81BA"] = 64
    result = AwsPoolCapacityProvider().check({}, _news(aws["subnets"], 2))
    assert not result.failures
    report = result.inputs["report"]
    assert report["offered_azs"] == {"g5.xlarge": ["us-east-1a", "us-east-1b"]}
    assert report["quotas"]["L-DB2E81BA"] == {"limit": 64, "in_use": 0, "pool_needs": 8}


def test_quota_shortfall_fails_check_with_the_numbers(aws) -> None:
    EC2_QUOTAS["L-DB2E81BA"] = 8
    # another G instance (not the pool's) already uses 8 vCPUs of the quota
    aws["ec2"].run_instances(
        ImageId=aws["image"], InstanceType="g5.2xlarge", MinCount=1, MaxCount=1, SubnetId=aws["subnets"][0]
    )
    result = AwsPoolCapacityProvider().check({}, _news(aws["subnets"], 2))
    (failure,) = result.failures
    assert failure.property == "needed"
    assert "AWS pool 'gpu' cannot grow to 2 instance(s)" in failure.reason
    assert "2 × g5.xlarge (4 vCPUs each) need 8 vCPUs of quota L-DB2E81BA" in failure.reason
    assert "which is 8 with 8 in use in us-east-1: 8 vCPUs short" in failure.reason
    assert "--desired-value 16" in failure.reason


def test_spot_and_mixed_pools_count_against_the_spot_quota(aws) -> None:
    EC2_QUOTAS.update({"L-DB2E81BA": 64, "L-3819A6DF": 4})
    report = quota.check_capacity(
        pool="gpu",
        region=REGION,
        instance_types=["g5.xlarge"],
        vcpus_per_instance=4,
        quota_class="G",
        market="mixed",
        needed=3,
        subnet_ids=aws["subnets"],
        on_demand_base=1,
    )
    assert set(report.quotas) == {"L-DB2E81BA", "L-3819A6DF"}
    assert report.quotas["L-DB2E81BA"]["pool_needs"] == 4 and report.quotas["L-3819A6DF"]["pool_needs"] == 8
    (shortfall,) = report.shortfalls
    assert (
        "L-3819A6DF 'All G and VT Spot Instance Requests'" in shortfall.message and "4 vCPUs short" in shortfall.message
    )


def test_unknown_quota_fails_rather_than_passing(aws) -> None:
    result = AwsPoolCapacityProvider().check(
        {}, _news(aws["subnets"], 1, quota_class="P", instance_types=["p5.48xlarge"], vcpus_per_instance=192)
    )
    (failure,) = result.failures
    assert "L-417A185B" in failure.reason and "192 vCPUs" in failure.reason


def test_discovery_by_tag_with_fingerprints_and_cleanup(aws) -> None:
    ec2, ssm = aws["ec2"], aws["ssm"]
    prefix = "/gpustack/proj/dev/gpu"
    ssm.put_parameter(Name=f"{prefix}/agent-token", Type="SecureString", Value="s3cret")
    tags = [{"ResourceType": "instance", "Tags": [{"Key": TAG_POOL, "Value": "gpu"}]}]
    launched = ec2.run_instances(
        ImageId=aws["image"],
        InstanceType="g5.xlarge",
        MinCount=2,
        MaxCount=2,
        SubnetId=aws["subnets"][0],
        TagSpecifications=tags,
    )["Instances"]
    first, second = (i["InstanceId"] for i in launched)
    # what the boot script does on the first instance: claim slot 0, tag itself, publish its fingerprint
    ssm.put_parameter(Name=f"{prefix}/slots/0", Type="String", Value=first)
    ec2.create_tags(Resources=[first], Tags=[{"Key": TAG_NODE, "Value": "gpu-0"}])
    pin = "sha256:" + "ab" * 32
    ssm.put_parameter(Name=f"{prefix}/nodes/gpu-0/fingerprint", Type="String", Value=pin)
    nodes = quota.discover_nodes(region=REGION, pool="gpu", parameter_prefix=prefix)
    assert [(n.node, n.instance_id, n.fingerprint) for n in nodes] == [("gpu-0", first, pin)]
    address = launched[0]["PrivateIpAddress"]
    props = {"pool": "gpu", "region": REGION, "parameter_prefix": prefix, "agent_port": 10150, "desired": 1}
    created = AwsPoolAgentsProvider().create(props)
    assert created.outs["endpoints"] == {"gpu-0": f"https://{address}:10150"}
    assert created.outs["fingerprints"] == {"gpu-0": pin}
    # the second instance claimed slot 1 but its agent has not published yet: up waits, then names it
    ec2.create_tags(Resources=[second], Tags=[{"Key": TAG_NODE, "Value": "gpu-1"}])
    with pytest.raises(RuntimeError, match=r"no serving agent on gpu-1 \(2 instance\(s\) claimed a node\)"):
        AwsPoolAgentsProvider().create({**props, "desired": 2, "timeout_s": 0.2, "poll_s": 0.1})
    # another pool's instances are not ours
    assert quota.discover_nodes(region=REGION, pool="other", parameter_prefix="/x") == []
    AwsPoolAgentsProvider().delete("agents-gpu", props)
    left = [p["Name"] for p in ssm.get_parameters_by_path(Path=prefix, Recursive=True)["Parameters"]]
    assert left == [f"{prefix}/agent-token"]
