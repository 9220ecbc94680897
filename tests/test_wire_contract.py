"""The components speak the agent's wire contract without the agent: gpustack-runtime's core is pydantic only, and
gpustack_pulumi imports nothing of the agent's server, NVML or TLS stack."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENT_ONLY = ("fastapi", "uvicorn", "starlette", "pynvml", "prometheus_client", "cryptography")


def test_the_runtime_core_depends_on_pydantic_only() -> None:
    requirements = importlib.metadata.requires("gpustack-runtime") or []
    core = [r for r in requirements if "extra ==" not in r]
    assert [r.split("<")[0].split(">")[0] for r in core] == ["pydantic"]
    agent = [r for r in requirements if 'extra == "agent"' in r]
    assert {r.split(">")[0] for r in agent} >= {"fastapi", "uvicorn", "nvidia-ml-py"}


def test_the_core_plans_and_builds_stacks_with_the_agent_stack_unimportable() -> None:
    script = f"""
import sys
for name in {AGENT_ONLY!r}:
    sys.modules[name] = None  # any import of it raises ImportError
from gpustack_runtime.wire import Inventory
import gpustack_pulumi.cli, gpustack_pulumi.components, gpustack_pulumi.preview
from gpustack_pulumi.cluster_plan import plan_cluster
from gpustack_pulumi.placement import Deployment
gpu = {{"index": 0, "uuid": "GPU-0", "vendor": "nvidia", "product": "NVIDIA L4", "memory_total": 24 * 2**30,
       "memory_used": 0, "compute_capability": "8.9"}}
inventory = Inventory.model_validate({{"nodes": [{{"name": "n", "devices": [gpu]}}]}})
result = plan_cluster(inventory, [Deployment(name="d", model="Qwen/Qwen3-0.6B", max_model_len=4096)])
assert result.ok and result.replicas["d/0"].launch, result.failures
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {AGENT_ONLY!r} and sys.modules[m] is not None)
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
