"""The policy pack under the real Pulumi CLI: `pulumi preview --policy-pack gpustack_pulumi/policy/pack` on the
README's `local` stack, on a machine that looks like it has one NVIDIA L4 to the stack's preview (an NVML stub and an
`nvidia-smi` script, tests/realcli/fake_gpu_host.py). The plan places the model on the L4 during preview, and the
pack, run by the Python language host (RunPlugin) with the pack config of `--policy-pack-config`, judges it: a GPU
ceiling of 0 and an allowlist without the L4 reject the stack (mandatory); the same under `{"all": "advisory"}`
passes with warnings; a ceiling of 1 and the L4 allowed pass. Skips without the CLI, gcc or pulumi-policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from realcli.cli import REPO, PulumiCli, find_cli, make_project
from realcli.fake_gpu_host import fake_gpu_env

BIN_DIR, WHERE = find_cli()
PACK = REPO / "gpustack_pulumi" / "policy" / "pack"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BIN_DIR is None, reason=WHERE),
    pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"),
]
pytest.importorskip("pulumi_policy", reason="pulumi-policy (the `policy` extra) is not installed")


class GpuHostCli(PulumiCli):
    """The CLI with the fake GPU host on the environment and the pack's Python named (PULUMI_PYTHON_CMD: the
    project's virtualenv, as an activated venv would be for a user)."""

    fake: dict[str, str]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PATH"] = f"{self.fake['PATH_PREFIX']}:{env['PATH']}"
        env["LD_LIBRARY_PATH"] = self.fake["LD_LIBRARY_PATH"]
        env["PULUMI_PYTHON_CMD"] = str(VENV_PYTHON)  # not resolved: the venv is found through this path
        return env


@pytest.fixture
def cli(tmp_path: Path) -> GpuHostCli:
    assert BIN_DIR is not None
    cli = GpuHostCli(BIN_DIR, make_project(tmp_path / "project"), tmp_path)
    cli.fake = fake_gpu_env(tmp_path / "gpu", [("NVIDIA L4", 23034)])
    cli.run("login", f"file://{cli.backend}")
    cli.run("stack", "select", "--create", "local")
    cli.run("config", "set", "gpustack:stateDir", str(tmp_path / "state"))
    cli.run("config", "set", "gpustack:model", "Qwen/Qwen3-0.6B")
    cli.run("config", "set", "gpustack:gateway", "false")
    return cli


def preview(cli: PulumiCli, config: dict | None, *extra: str):
    args = ["preview", "--diff", "--policy-pack", str(PACK)]
    if config is not None:
        path = cli.work / f"policy-config-{len(cli.log)}.json"
        path.write_text(json.dumps(config))
        args += ["--policy-pack-config", str(path)]
    return cli.run(*args, *extra, check=False, timeout_s=600)


def ran_the_pack(out: str) -> bool:
    """`preview --diff` lists the packs it ran ("Policy Packs run:", NAME|STACK|PATH VERSION)."""
    return "Policy Packs run:" in out and f"gpustack|local|{PACK}  0.1.0" in out


def test_policy_pack_rejects_a_bad_stack_and_passes_a_good_one(cli: GpuHostCli) -> None:
    bad = {"gpustack-gpu-ceiling": {"maxGpus": 0}, "gpustack-allowed-gpu-products": {"products": ["H100"]}}
    rejected = preview(cli, bad)
    out = rejected.stdout + rejected.stderr
    assert rejected.returncode != 0, out
    assert "[mandatory]  gpustack-gpu-ceiling" in out, out
    assert "the stack's placements hold 1 GPUs (local-plan: 1); the ceiling is 0" in out, out
    assert "[mandatory]  gpustack-allowed-gpu-products" in out, out
    assert "has a NVIDIA L4, which is not an allowed GPU (H100)" in out, out
    # The placement itself is in the preview (the plan placed the replica on the L4).
    assert "NVIDIA L4" in rejected.stdout and "chat-r0" in rejected.stdout, out

    # The same violations, advisory: reported, and the preview passes.
    advisory = preview(cli, {"all": "advisory", **bad})
    out = advisory.stdout + advisory.stderr
    assert advisory.returncode == 0, out
    assert "[advisory]  gpustack-gpu-ceiling" in out and "[advisory]  gpustack-allowed-gpu-products" in out, out

    good = preview(cli, {"gpustack-gpu-ceiling": {"maxGpus": 1}, "gpustack-allowed-gpu-products": {"products": ["L4"]}})
    out = good.stdout + good.stderr
    assert good.returncode == 0, out
    assert ran_the_pack(out) and "[mandatory]" not in out and "[advisory]" not in out, out
    assert "+ 8 to create" in out, out


def test_policy_pack_defaults_pass_the_readme_local_stack(cli: GpuHostCli) -> None:
    """No pack config: every policy at its default level; the local stack (token a secret, agent on loopback,
    everything placed) passes."""
    passed = preview(cli, None)
    out = passed.stdout + passed.stderr
    assert passed.returncode == 0, out
    assert ran_the_pack(out) and "[mandatory]" not in out, out
