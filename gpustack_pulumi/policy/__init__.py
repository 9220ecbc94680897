"""CrossGuard policies for gpustack stacks (GPU, exposure, secret and cost guardrails), usable as a policy pack:

    pulumi preview --policy-pack "$(python -c 'import gpustack_pulumi.policy as p; print(p.PACK_DIR)')"

(in this repository: ``--policy-pack gpustack_pulumi/policy/pack``). The checks are plain functions in
:mod:`gpustack_pulumi.policy.checks`; :mod:`gpustack_pulumi.policy.policies` wraps them for pulumi-policy (the
``policy`` extra: ``pip install 'gpustack-pulumi[policy]'``).
"""

from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent / "pack"
"""The policy pack directory (PulumiPolicy.yaml and __main__.py)."""

__all__ = ["PACK_DIR"]
