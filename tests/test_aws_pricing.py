"""Live On-Demand prices from the AWS Price List API for the preview's $/h (``--aws-prices live``).

moto has no Price List API, so the boto3 client is stubbed in-process with botocore's Stubber (which also checks
the request we send: service, filters, format); the product document has the Price List's shape (a JSON string
per product, ``terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD``). The rates in it are test values, not
AWS's prices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from gpustack_pulumi.pools.aws import cost, pricing
from gpustack_pulumi.pools.aws.component import pool_spec

REPO = Path(__file__).resolve().parents[1]
TEST_RATE = 10.125  # a test value


def product(instance_type: str, rate: float, unit: str = "Hrs") -> str:
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": "TESTSKU",
                    "attributes": {"instanceType": instance_type, "regionCode": "us-east-1",
                                   "operatingSystem": "Linux", "tenancy": "Shared"}},
        "serviceCode": "AmazonEC2",
        "publicationDate": "2026-11-30T21:00:00Z",
        "terms": {"OnDemand": {"TESTSKU.JRTCKXETXF": {
            "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": "JRTCKXETXF", "sku": "TESTSKU",
            "priceDimensions": {"TESTSKU.JRTCKXETXF.6YS6EN2CT7": {
                "unit": unit, "description": "test rate", "pricePerUnit": {"USD": f"{rate:.10f}"}}}}}},
    })  # fmt: skip


@pytest.fixture
def client():
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    made = session.client("pricing")
    with Stubber(made) as stubber:
        yield made, stubber


def spec(instance_type: str = "g6e.12xlarge", **extra):
    args = {"instance_type": instance_type, "region": "us-east-1", "vpc_id": "vpc-1", "subnet_ids": ["subnet-1"],
            "agent_token": "t", "max_nodes": 2, "agent_cidrs": ["10.0.0.0/16"], **extra}  # fmt: skip
    return pool_spec("gpu", args)


def expect(stubber: Stubber, instance_type: str, products: list[str]) -> None:
    stubber.add_response(
        "get_products",
        {"PriceList": products, "FormatVersion": "aws_v1"},
        {"ServiceCode": "AmazonEC2", "Filters": pricing.on_demand_filters(instance_type, "us-east-1"),
         "FormatVersion": "aws_v1"},
    )  # fmt: skip


def test_the_live_rate_is_the_linux_on_demand_hourly_price(client) -> None:
    made, stubber = client
    # A placeholder SKU priced 0 and a per-GB dimension come first: both are skipped.
    expect(stubber, "g6e.12xlarge", [product("g6e.12xlarge", 0.0), product("g6e.12xlarge", 3.0, unit="GB"),
                                     product("g6e.12xlarge", TEST_RATE)])  # fmt: skip
    price = pricing.live_on_demand_price("g6e.12xlarge", "us-east-1", made)
    assert price == cost.Price("g6e.12xlarge", TEST_RATE, "on_demand", "us-east-1", pricing.SOURCE, "2026-11-01")
    filters = {f["Field"]: f["Value"] for f in pricing.on_demand_filters("g6e.12xlarge", "us-east-1")}
    assert filters == {"instanceType": "g6e.12xlarge", "regionCode": "us-east-1", "operatingSystem": "Linux",
                       "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}  # fmt: skip


def test_live_prices_price_a_type_the_catalog_lacks_and_flow_into_the_report(client) -> None:
    made, stubber = client
    pool = spec()
    assert cost.price_of(pool) is None  # not in the catalog
    expect(stubber, "g6e.12xlarge", [product("g6e.12xlarge", TEST_RATE)])
    live, notes = pricing.live_prices([pool], made)
    assert notes == [] and live["gpu"].per_hour == TEST_RATE
    plan = {"replicas": [{"deployment": "chat", "placements": [{"node": "gpu-0", "device_indices": [0, 1]}]}]}
    text = cost.render_cost_markdown([pool], plan, live)
    assert "| gpu | g6e.12xlarge | on-demand | 1 (0–2) | gpu-0 | 10.125 | 10.12 |" in text
    assert f"| chat | {TEST_RATE / 2:.2f} |" in text  # 2 of the node's 4 GPUs
    assert f"Prices: on_demand us-east-1, {pricing.SOURCE} (2026-11-01)" in text
    summary = cost.cost_summary([pool], plan, live)
    assert summary["pools"][0]["price_source"] == pricing.SOURCE and summary["total_per_hour"] == TEST_RATE


def test_a_pools_own_price_and_capacity_blocks_are_not_asked_for(client) -> None:
    made, _ = client  # no response stubbed: any call would fail the test
    given = spec(price_per_hour=7.5)
    block = spec("p5.48xlarge", market="capacity-block", capacity_reservation_id="cr-0123456789abcdef0")
    live, notes = pricing.live_prices([given, block], made)
    assert live == {} and notes == []
    assert cost.price_of(given).kind == "given"
    assert cost.price_of(block).kind == "capacity_block"  # the block's rate, from the catalog


def test_no_product_leaves_the_catalog_price_with_a_note(client) -> None:
    made, stubber = client
    expect(stubber, "g5.xlarge", [])
    live, notes = pricing.live_prices([spec("g5.xlarge")], made)
    assert live == {} and notes == ["gpu: no On-Demand price for g5.xlarge in us-east-1; catalog price used"]
    assert cost.price_of(spec("g5.xlarge"), live).per_hour == 1.006  # the catalog's


def test_the_preview_command_warns_and_keeps_catalog_prices_when_the_api_does_not_answer() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip
    argv = [sys.executable, "-m", "gpustack_pulumi.cli", "preview", str(REPO / "stacks" / "aws"), "--stack", "aws",
            "--config-file", str(REPO / "stacks" / "aws" / "Pulumi.aws.example.yaml"), "--planned", "--markdown",
            "--aws-prices", "live"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "warning: gpu: the Price List API did not answer" in result.stderr
    assert result.stdout == (REPO / "stacks" / "aws" / "preview.md").read_text()
