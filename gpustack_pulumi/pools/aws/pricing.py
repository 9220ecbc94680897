"""Live On-Demand prices from the AWS Price List API (boto3 ``pricing.get_products``), for the preview report.

The catalog (``catalog/aws_prices.yaml``) holds the prices we could source from public pages, with their date;
AWS changes prices and adds types faster than a catalog follows. With ``--aws-prices live`` the preview asks the
Price List API for each pool's instance type in its region instead: Linux, shared tenancy, no pre-installed
software, capacity status "Used" (the plain On-Demand rate). The price carries the term's effective date and the
API as its source. No price found (a type not offered there) leaves the catalog's, if any.

The API answers in a few regions only (us-east-1 serves every region's prices); ``AWS_ENDPOINT_URL`` is honoured by
boto3 as everywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gpustack_pulumi.pools.aws.cost import Price

PRICING_REGION = "us-east-1"
SOURCE = "AWS Price List API (pricing.get_products, AmazonEC2)"


def on_demand_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    """The Price List filters of the plain Linux On-Demand rate of ``instance_type`` in ``region``."""
    wanted = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in wanted.items()]


def parse_on_demand(price_list: Iterable[str | dict[str, Any]], instance_type: str, region: str) -> Price | None:
    """The hourly USD rate of the first product with one: ``terms.OnDemand.*.priceDimensions.*.pricePerUnit``,
    unit ``Hrs``. A product that prices at 0 (a placeholder SKU) is skipped."""
    for raw in price_list:
        product = json.loads(raw) if isinstance(raw, str) else raw
        for term in (product.get("terms") or {}).get("OnDemand", {}).values():
            for dimension in (term.get("priceDimensions") or {}).values():
                if dimension.get("unit") != "Hrs":
                    continue
                usd = float((dimension.get("pricePerUnit") or {}).get("USD") or 0)
                if usd > 0:
                    date = str(term.get("effectiveDate") or product.get("publicationDate") or "")[:10] or None
                    return Price(instance_type, usd, "on_demand", region, SOURCE, date)
    return None


def live_on_demand_price(instance_type: str, region: str, client: Any | None = None) -> Price | None:
    """Ask the Price List API (raises botocore's errors: no credentials, no access)."""
    if client is None:
        import boto3

        client = boto3.session.Session(region_name=PRICING_REGION).client("pricing")
    pages = client.get_paginator("get_products").paginate(
        ServiceCode="AmazonEC2", Filters=on_demand_filters(instance_type, region), FormatVersion="aws_v1"
    )
    for page in pages:
        price = parse_on_demand(page.get("PriceList") or [], instance_type, region)
        if price is not None:
            return price
    return None


def live_prices(specs: Iterable[Any], client: Any | None = None) -> tuple[dict[str, Price], list[str]]:
    """Live prices by pool name for pools of ``specs`` (``PoolSpec``) that do not give their own, and a note for
    each pool the API could not price (the report then uses the catalog's)."""
    prices: dict[str, Price] = {}
    notes: list[str] = []
    for spec in specs:
        if spec.price_per_hour is not None or spec.market == "capacity-block":
            continue
        instance_type = spec.primary.instance_type
        try:
            price = live_on_demand_price(instance_type, spec.region, client)
        except Exception as error:  # botocore: no credentials, no access, throttled
            notes.append(f"{spec.name}: the Price List API did not answer ({error}); catalog price used")
            continue
        if price is None:
            notes.append(f"{spec.name}: no On-Demand price for {instance_type} in {spec.region}; catalog price used")
        else:
            prices[spec.name] = price
    return prices, notes
