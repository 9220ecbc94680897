# No `from __future__ import annotations`: Pulumi reads these annotations at runtime (see components/__init__.py).
"""The dynamic resources the components create. Each binds a provider (in ``gpustack_pulumi.providers``) to typed
outputs; the provider classes live in importable modules so state pickles them by reference."""

from typing import Any

import pulumi
import pulumi.dynamic

from gpustack_pulumi.providers.agent_certificate import AgentCertificateProvider
from gpustack_pulumi.providers.cluster_plan import ClusterPlanProvider
from gpustack_pulumi.providers.model_replica import ModelReplicaProvider
from gpustack_pulumi.providers.token import AgentTokenProvider


class AgentToken(pulumi.dynamic.Resource, module="gpustack", name="AgentToken"):
    """A random bearer token for the agents, kept secret in state."""

    token: pulumi.Output[str]

    def __init__(self, name: str, rotation: int = 0, opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"]))
        super().__init__(AgentTokenProvider(), name, {"rotation": rotation, "token": None}, opts)


class AgentCertificate(pulumi.dynamic.Resource, module="gpustack", name="AgentCertificate"):
    """A self-signed TLS certificate for agents (the key a secret in state); clients pin ``fingerprint``."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]
    fingerprint: pulumi.Output[str]

    def __init__(
        self, name: str, names: list[str], rotation: int = 0, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["key_pem"]))
        seeds = {"cert_pem": None, "key_pem": None, "fingerprint": None}
        super().__init__(AgentCertificateProvider(), name, {"names": sorted(names), "rotation": rotation, **seeds},
                         opts)  # fmt: skip


class ClusterPlan(pulumi.dynamic.Resource, module="gpustack", name="ClusterPlan"):
    """The joint plan of a cluster: every replica of every deployment placed together (check), and the
    capacity claimed on the agents for all of them before any engine starts (create/update)."""

    plan: pulumi.Output[dict]
    """status, source (agents or planned), the Plan, and each replica's slice by 'deployment/index'."""

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"]))
        super().__init__(ClusterPlanProvider(), name, {**props, "plan": None, "unclaimed": None}, opts)


class ModelReplica(pulumi.dynamic.Resource, module="gpustack", name="ModelReplica"):
    """One replica of a model deployment: placed at check, started through the agents at create."""

    placement: pulumi.Output[dict]
    launch: pulumi.Output[list]
    endpoint: pulumi.Output[str]
    node: pulumi.Output[str]
    state: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["token", "secrets"])
        )
        seeds = {"placement": None, "launch": None, "endpoint": None, "node": None, "state": None,
                 "instances": None, "restarts": None}  # fmt: skip
        super().__init__(ModelReplicaProvider(), name, {**props, **seeds}, opts)


# LocalAgent lives with its pool (gpustack_pulumi.pools.local); re-exported here, where it used to be.
from gpustack_pulumi.pools.local.resource import LocalAgent  # noqa: E402

__all__ = ["AgentCertificate", "AgentToken", "ClusterPlan", "LocalAgent", "ModelReplica"]
