# No `from __future__ import annotations`: Pulumi reads component annotations at runtime.
"""The one protocol every node pool implements, whatever makes its nodes (this machine, SSH hosts, a cloud's
instances, a Kubernetes cluster's GPU nodes).

A pool tells the cluster two things:

- ``endpoints``: node name → agent URL, an Output that resolves once the pool's agents run;
- ``planned_capacity``: the capacity documents (``gpustack_runtime.wire.CapacityDocument`` as JSON dicts) of
  the nodes the pool *will* create, known at program time, so the cluster plan can place replicas before any
  agent exists and the very first ``pulumi preview`` shows — or fails on — the placement. ``None`` when the
  pool cannot know (bare SSH hosts whose GPUs nobody declared): the plan then waits for the agents ("decided at
  update").

A pool whose agents serve HTTPS also has ``fingerprints`` (node → ``sha256:…`` of its agent's certificate): the
cluster pins every call to those agents to them, the way host keys are pinned.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pulumi

# Device backends an agent can read devices with: auto (NVML, then Ascend, else none), nvml, ascend, none.
DEVICE_BACKENDS = ("auto", "nvml", "ascend", "none")


@runtime_checkable
class NodePool(Protocol):
    endpoints: pulumi.Output[dict[str, str]]
    planned_capacity: list[dict] | None


def planned_documents(pools: Sequence[NodePool]) -> list[dict] | None:
    """The planned capacity of a set of pools: every pool's documents, or None when any pool cannot tell."""
    per_pool = [pool.planned_capacity for pool in pools]
    if any(documents is None for documents in per_pool):
        return None
    return [document for documents in per_pool for document in documents or []]
