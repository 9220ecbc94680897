"""Placement: inventory (capacity documents) + deployments (+ previous plan) → Plan. Pure, deterministic.

``plan()`` is the entry point; ``Planner`` keeps an indexed inventory and its last plan for incremental
re-planning. Filters (``filters``), scorers (``scorers``), the heuristic (``heuristic``) and the exact
solver (``solver``) are the stages; ``memory`` holds the engine memory models.
"""

from gpustack_pulumi.placement.models import (
    KNOWN_ENGINES,
    Deployment,
    DeploymentList,
    NodePlacement,
    PlacedReplica,
    Plan,
    PlanSummary,
    Strategy,
    UnplacedReplica,
)
from gpustack_pulumi.placement.planner import DEFAULT_TIME_BUDGET_S, Planner, plan

__all__ = [
    "DEFAULT_TIME_BUDGET_S",
    "KNOWN_ENGINES",
    "Deployment",
    "DeploymentList",
    "NodePlacement",
    "PlacedReplica",
    "Plan",
    "PlanSummary",
    "Planner",
    "Strategy",
    "UnplacedReplica",
    "plan",
]
