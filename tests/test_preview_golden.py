"""The placement report and diff of the `onprem` example stack, committed as golden files.

Regenerate after an intended change with: UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_preview_golden.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_support import check_golden, run_preview

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
COMMON = [
    "stacks/onprem",
    "--stack",
    "onprem",
    "--inventory",
    "examples/onprem-inventory.yaml",
    "--config-file",
    "stacks/onprem/Pulumi.onprem.example.yaml",
    "--config",
    "gpustack:sshPrivateKey=not-used-by-preview",
]


def preview(*args: str) -> str:
    return run_preview(*COMMON, *args)


@pytest.mark.slow
def test_onprem_report_and_diff_match_the_golden_files(tmp_path: Path) -> None:
    report = preview("--json")
    check_golden("onprem-preview.json", report)
    check_golden("onprem-preview.md", preview("--markdown"))
    previous = tmp_path / "previous.json"
    previous.write_text(report)
    diff = preview("--config", "gpustack:chatReplicas=3", "--previous", str(previous), "--markdown")
    check_golden("onprem-preview-diff.md", diff)
    assert "- added chat#2 on" in diff and "moved" not in diff
