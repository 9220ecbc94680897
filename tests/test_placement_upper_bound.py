"""The configuration-LP upper bound (benchmarks/placement_upper_bound.py) is a valid bound on the exact solver's
placed replicas: never below a proven optimum nor below what ``plan()`` places, and exact on hand-made cases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from exact_optimum_bench import cases
from placement_bench import make_inventory
from placement_upper_bound import (
    DeviceType,
    Item,
    Relaxation,
    capture,
    check_in_product,
    config_lp_bound,
    prove_at_most,
    upper_bound,
)
from test_placement_exact_optimum import PROVEN

from gpustack_pulumi.placement.models import Deployment


@pytest.fixture(scope="module")
def generated() -> list[tuple]:
    return cases(12)


@pytest.mark.parametrize("index", [1, 3, 4, 11])
def test_bound_is_at_least_the_proven_optimum(generated: list[tuple], index: int) -> None:
    inventory, deployments, gpus = generated[index]
    assert gpus == PROVEN[index][0]
    bound = upper_bound(inventory, deployments)
    assert bound.replicas >= PROVEN[index][2]
    assert bound.value >= bound.lp_value - 1e-6  # the dual certificate is never below the master's value


def test_bound_is_at_least_what_plan_places(generated: list[tuple]) -> None:
    inventory, deployments, _ = generated[5]
    relaxation, result, _ = capture(inventory, deployments, time_budget_s=0.5)
    assert result is not None
    assert config_lp_bound(relaxation).replicas >= result.summary.placed


def test_hand_made_fractional_packing() -> None:
    # Two devices of 100 MiB; two replicas of 60 MiB, three of 45 MiB: a device holds one 60 or two 45s, so
    # three replicas fit; the LP takes 1.5 devices of {45, 45} and half a device of {60}: 3.5.
    relaxation = Relaxation(
        items=[Item(0, 60, 1, "a"), Item(1, 45, 1, "b")],
        replicas=[2, 3],
        types=[DeviceType(100, 2, (0, 1))],
    )
    bound = config_lp_bound(relaxation)
    assert bound.value == pytest.approx(3.5)
    assert bound.replicas == 3


def test_hand_made_cluster_of_two_gpus() -> None:
    # One node with two H100s; twenty deployments of one model, two replicas each: every replica claims the
    # same MiB, so at most ``2 · (free // claim)`` fit (fewer than the forty wanted), and the bound is exactly that.
    inventory = make_inventory([("H100", 1, 2)])
    deployments = [
        Deployment(name=f"d{i:02d}", model="Qwen/Qwen3-0.6B", replicas=2, engine="vllm", max_model_len=8192)
        for i in range(20)
    ]
    relaxation, _, _ = capture(inventory, deployments, time_budget_s=None)
    claims = {item.claim for item in relaxation.items}
    assert len(claims) == 1 and all(item.ranks == 1 for item in relaxation.items)
    assert [(t.count, len(t.items)) for t in relaxation.types] == [(2, 20)]
    per_device = relaxation.types[0].capacity // claims.pop()
    assert 2 <= per_device < 20
    bound = config_lp_bound(relaxation)
    assert bound.value == pytest.approx(2 * per_device)
    assert bound.replicas == 2 * per_device


def test_branch_and_price_proves_a_small_optimum(generated: list[tuple]) -> None:
    inventory, deployments, _ = generated[3]
    relaxation, _, _ = capture(inventory, deployments, time_budget_s=None)
    proof = prove_at_most(relaxation, PROVEN[3][2], time_limit_s=10)
    assert proof.proven
    # one fewer than the optimum: a placement of more exists, and the product's own objects accept it
    proof = prove_at_most(relaxation, PROVEN[3][2] - 1, time_limit_s=10)
    assert not proof.proven and proof.witness is not None
    assert len(proof.witness) >= PROVEN[3][2] and check_in_product(relaxation, proof.witness)


def test_the_product_check_rejects_an_overfull_device(generated: list[tuple]) -> None:
    inventory, deployments, _ = generated[3]
    relaxation, _, _ = capture(inventory, deployments, time_budget_s=None)
    # a single-rank replica of which one fits a device but two do not, of a deployment with two replicas or more
    i, device = next(
        (i, members[0])
        for t, members in enumerate(relaxation.members)
        for i in relaxation.types[t].items
        if relaxation.items[i].tp == 1
        and relaxation.replicas[relaxation.items[i].group] >= 2
        and 2 * relaxation.items[i].claim > relaxation.types[t].capacity
    )
    assert check_in_product(relaxation, [(i, [device])])
    assert not check_in_product(relaxation, [(i, [device]), (i, [device])])
