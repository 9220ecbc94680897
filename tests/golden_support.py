"""Golden files and `gpustack-pulumi preview` runs shared by the preview report tests.

Regenerate after an intended change with: UPDATE_GOLDEN=1 .venv/bin/pytest tests/<the test file>
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"


def run_preview(*args: str) -> str:
    """``gpustack-pulumi preview ARGS`` from the repository root; it must exit 0. Its stdout."""
    result = subprocess.run([sys.executable, "-m", "gpustack_pulumi.cli", "preview", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; review and regenerate with UPDATE_GOLDEN=1"
