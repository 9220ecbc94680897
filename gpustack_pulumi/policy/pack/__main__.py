"""The gpustack policy pack: `pulumi preview --policy-pack gpustack_pulumi/policy/pack` (Python with
gpustack-pulumi and pulumi-policy installed: the active virtualenv, or PULUMI_PYTHON_CMD)."""

from pulumi_policy import EnforcementLevel, PolicyPack

from gpustack_pulumi.policy.policies import PACK_NAME, POLICIES
from gpustack_pulumi.policy.secret_view import keep_secrets_in_analyzer

keep_secrets_in_analyzer()
PolicyPack(name=PACK_NAME, policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
