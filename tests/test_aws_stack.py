"""The `aws` example stack: its preview report (placements on the pool's planned nodes, the instances the plan
buys, $/h per pool and deployment) matches the committed one, and a quota shortfall fails it with the numbers
(moto as the AWS endpoint, as in test_aws_quota).

Regenerate after an intended change with: UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_aws_stack.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_aws_quota import EC2_QUOTAS, aws, moto_endpoint  # noqa: F401 (fixtures)

from gpustack_pulumi.pools.aws import report
from gpustack_pulumi.preview import _config_file

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "stacks" / "aws"
GOLDEN = STACK / "preview.md"
CONFIG = _config_file(STACK / "Pulumi.aws.example.yaml")


def test_preview_report_shows_instances_placements_and_cost() -> None:
    capture = report.capture_stack(STACK, stack="aws", config=CONFIG)
    assert [spec.name for spec in capture.pools] == ["gpu"]
    assert [d["name"] for d in capture.planned] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    text, ok = report.build(capture, "aws")
    assert ok
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "stacks/aws/preview.md changed; review and regenerate with UPDATE_GOLDEN=1"
    rows = [line for line in text.splitlines() if line.startswith("| gpu | g5.xlarge")]
    assert len(rows) == 1 and "| on-demand | 3 (0–4) |" in rows[0] and rows[0].endswith("| 1.006 | 3.02 |")
    assert "Total: **$3.02/h**" in text
    assert "| chat | 2.01 |" in text and "| small | 1.01 |" in text


def test_quota_shortfall_fails_the_report_with_numbers(aws) -> None:  # noqa: F811
    config = {**CONFIG, "gpustack:subnetIds": json.dumps(aws["subnets"])}
    capture = report.capture_stack(STACK, stack="aws", config=config)
    EC2_QUOTAS["L-DB2E81BA"] = 8
    text, ok = report.build(capture, "aws", check_quotas=True)
    assert not ok
    assert (
        "3 × g5.xlarge (4 vCPUs each) need 12 vCPUs of quota L-DB2E81BA 'Running On-Demand G and VT instances', "
        "which is 8 with 0 in use in us-east-1: 4 vCPUs short"
    ) in text
    EC2_QUOTAS["L-DB2E81BA"] = 64
    text, ok = report.build(capture, "aws", check_quotas=True)
    assert ok and "- gpu: OK (L-DB2E81BA: 12 needed, 0 in use of 64)" in text


def test_the_main_preview_command_prints_the_same_report_with_cost() -> None:
    """`gpustack-pulumi preview --planned` (the command CI runs on a pull request) carries the AWS section too:
    the same Markdown as the committed report, and the figures as data in the JSON."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "gpustack_pulumi.cli", "preview", str(STACK), "--stack", "aws", "--config-file",
            str(STACK / "Pulumi.aws.example.yaml"), "--planned"]  # fmt: skip
    markdown = subprocess.run([*argv, "--markdown"], capture_output=True, text=True, check=False, cwd=REPO)
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout == GOLDEN.read_text()
    as_json = subprocess.run([*argv, "--json"], capture_output=True, text=True, check=False, cwd=REPO)
    assert as_json.returncode == 0, as_json.stderr
    costs = json.loads(as_json.stdout)["costs"]
    [pool] = costs["pools"]
    assert (pool["pool"], pool["instance_type"], pool["instances"]) == ("gpu", "g5.xlarge", 3)
    assert pool["planned_nodes_used"] == ["gpu-1", "gpu-2", "gpu-3"]
    assert pool["price_per_instance_hour"] == 1.006 and pool["price_date"] == "2026-06-17"
    assert costs["total_per_hour"] == round(3 * 1.006, 4)
    assert costs["deployments"] == {"chat": round(2 * 1.006, 4), "small": 1.006}
