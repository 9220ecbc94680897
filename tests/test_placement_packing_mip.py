"""The exact solver's MIP stage (``placement/packing_mip.py``, HiGHS): the placed replicas it adds where CP-SAT's
search stalls, its model (rank pools, pipeline stages, CPU hosts, merged deployments) checked on the solutions it
returns, and the process around it (no banner on standard output, the solver without HiGHS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from exact_optimum_bench import cases
from placement_helpers import assert_capacity_respected, check_packing

from gpustack_pulumi.placement import solver as solver_module
from gpustack_pulumi.placement.packing_mip import (
    KindSolution,
    PackingKind,
    PackingOption,
    highs_available,
    solve_packing,
)
from gpustack_pulumi.placement.planner import DEFAULT_TIME_BUDGET_S, Planner

pytestmark = pytest.mark.skipif(not highs_available(), reason="highspy is a dependency; not importable here")


def test_tensor_parallel_pools_pipeline_stages_and_cpu_hosts() -> None:
    # node 0: devices 0-3 in two NVLink pairs; node 1: devices 4-5 (one pool); node 2: a CPU host
    devices = {0: 100, 1: 100, 2: 100, 3: 100, 4: 100, 5: 100}
    hosts = {2: 250}
    kinds = [
        # TP=2 within a pair: at most 2 per pair by memory (60 each), 4 wanted
        PackingKind(4, 1, [PackingOption(0, 2, 1, 60, [(0, [[0, 1], [2, 3]]), (1, [[4, 5]])])]),
        # TP=2 × PP=2 over two nodes, or a CPU host
        PackingKind(
            2,
            1,
            [
                PackingOption(0, 2, 2, 30, [(0, [[0, 1], [2, 3]]), (1, [[4, 5]])]),
                PackingOption(None, 1, 1, 120, [(2, [])]),
            ],
        ),
        # TP=1 fillers
        PackingKind(6, 1, [PackingOption(0, 1, 1, 35, [(0, [[0, 1, 2, 3]]), (1, [[4, 5]])])]),
    ]
    result = solve_packing(kinds, devices, hosts, None, 10.0, 10_000)
    assert result is not None and result.optimal
    check_packing(kinds, devices, hosts, result)
    # A device holds one 60 rank, so three pools hold three TP=2 replicas (the fourth has no pool left); they
    # leave 40 on every device, one 35 filler each (6); both pipeline replicas fit on the CPU host
    # (2 × 120 ≤ 250). The optimum: 3 + 2 + 6 = 11 of 12.
    assert result.value == result.bound == 11


def test_the_start_reaches_highs_as_a_feasible_point_of_its_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # The start is what makes HiGHS search only above the hint; a start it rejects (or never gets) costs the
    # large cases their improvement silently, so the vector handed over is checked against the model's own rows.
    import highspy
    import numpy as np

    seen: dict[str, object] = {}
    pass_model, set_solution = highspy.Highs.passModel, highspy.Highs.setSolution

    def spy_model(self, lp):
        seen["lp"] = lp
        return pass_model(self, lp)

    def spy_solution(self, solution):
        seen["x"] = np.array(solution.col_value)
        return set_solution(self, solution)

    monkeypatch.setattr(highspy.Highs, "passModel", spy_model)
    monkeypatch.setattr(highspy.Highs, "setSolution", spy_solution)
    devices = {0: 100, 1: 100, 2: 100, 3: 100}
    kinds = [
        PackingKind(2, 1, [PackingOption(0, 2, 1, 60, [(0, [[0, 1], [2, 3]])])]),
        PackingKind(3, 1, [PackingOption(0, 1, 1, 30, [(0, [[0, 1, 2, 3]])])]),
    ]
    start = {
        (0, 0): KindSolution(1, {0: 1}, {0: [(1, [0, 1]), (0, [2, 3])]}, {0: 1, 1: 1, 2: 0, 3: 0}),
        (1, 0): KindSolution(3, {0: 3}, {0: [(3, [0, 1, 2, 3])]}, {0: 1, 1: 1, 2: 1, 3: 0}),
    }
    result = solve_packing(kinds, devices, {}, start, 5.0, 100)
    lp, x = seen["lp"], seen["x"]
    assert float(np.dot(lp.col_cost_, x)) == 4  # the start's value: 1 + 3 replicas
    assert np.all(x >= lp.col_lower_) and np.all(x <= lp.col_upper_)
    matrix = lp.a_matrix_
    for row in range(lp.num_row_):
        span = range(matrix.start_[row], matrix.start_[row + 1])
        activity = sum(matrix.value_[k] * x[matrix.index_[k]] for k in span)
        assert lp.row_lower_[row] - 1e-9 <= activity <= lp.row_upper_[row] + 1e-9, row
    # from there: both TP=2 replicas (one per pair) and the three fillers (40 left on each device) = 5
    assert result is not None and result.optimal and result.value == 5
    check_packing(kinds, devices, {}, result)


def test_priority_weights_decide_what_is_left_out() -> None:
    # room for one of the two; the weighted one wins
    devices = {0: 10}
    kinds = [
        PackingKind(1, 1, [PackingOption(0, 1, 1, 6, [(0, [[0]])])]),
        PackingKind(1, 2, [PackingOption(0, 1, 1, 8, [(0, [[0]])])]),
    ]
    result = solve_packing(kinds, devices, {}, None, 5.0, 100)
    assert result is not None and result.value == 2
    assert set(result.solutions) == {(1, 0)}


def test_the_56_gpu_case_reaches_its_lp_bound() -> None:
    # --large case 5: CP-SAT (also in 60 s) placed 158; the configuration-LP bound is 160 (160.37). The compact
    # MIP finds 160 in about 1.2 s of HiGHS on the 2-core reference VM (and the bound proves it), so the default
    # budget (2 s) only just holds it there (BENCHMARKS.md); a larger budget keeps the test off the machine's speed.
    inventory, deployments, gpus = cases(8, large=True)[5]
    assert (gpus, sum(d.replicas for d in deployments)) == (56, 180)
    planner = Planner(inventory)
    result = planner.plan(deployments, exact=True, time_budget_s=8.0)
    assert result.summary.placed == 160
    assert planner.last_exact is not None and planner.last_exact.placed_optimal
    assert_capacity_respected(result, inventory)


def test_without_highs_the_exact_solver_runs_on_cp_sat_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solver_module, "highs_available", lambda: False)

    def not_called(*args, **kwargs):
        raise AssertionError("HiGHS ran although highspy is unavailable")

    monkeypatch.setattr(solver_module, "solve_packing", not_called)
    inventory, deployments, _ = cases(12)[1]
    planner = Planner(inventory)
    result = planner.plan(deployments, exact=True, time_budget_s=DEFAULT_TIME_BUDGET_S)
    assert result.summary.placed == 22  # the proven optimum (tests/test_placement_exact_optimum.py)
    assert planner.last_exact is not None and planner.last_exact.placed_optimal


def test_highs_banner_never_reaches_standard_output() -> None:
    # HiGHS prints its banner on the C-level stdout at its first construction in a process, whatever the
    # options; `gpustack-pulumi plan --json` writes its document there.
    script = (
        "import json\n"
        "from gpustack_pulumi.placement.packing_mip import PackingKind, PackingOption, solve_packing\n"
        "kinds = [PackingKind(2, 1, [PackingOption(0, 1, 1, 5, [(0, [[0]])])])]\n"
        "result = solve_packing(kinds, {0: 10}, {}, None, 5.0, 100)\n"
        "print(json.dumps({'value': result.value}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == {"value": 2}
    assert "HiGHS" not in done.stdout


def test_interchangeable_replicas_are_dealt_to_distinct_gpus() -> None:
    # Two deployments of one kind, two replicas each, four slots: two on GPU 0, two on GPU 1 (node 0): each
    # deployment gets one replica per GPU. Then slots on GPUs 0, 1, 2, 2 where "a" already has a replica on
    # GPU 0 (an earlier plan): "a" gets GPUs 1 and 2, "b" GPUs 0 and 2.
    from types import SimpleNamespace

    def task(name: str) -> SimpleNamespace:
        return SimpleNamespace(prepared=SimpleNamespace(name=name))

    option = solver_module._Option(0, 0, "vllm", 1, 1, 1 << 30, 0.5, "detail", [(0, [0, 1, 2])])
    groups = [
        solver_module._Group([task("a"), task("a")], [option]),
        solver_module._Group([task("b"), task("b")], [option]),
    ]
    kinds = solver_module._Kinds([PackingKind(4, 1, [])], [[0, 1]], {0: 0, 1: 0})
    slots = [(0, 0, [(0, [0])]), (0, 0, [(0, [0])]), (0, 0, [(0, [1])]), (0, 0, [(0, [1])])]

    def gpus_of(state, slots) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for task_, chosen in solver_module._deal(state, groups, kinds, slots):
            assert chosen is not None
            out.setdefault(task_.prepared.name, []).extend(g for _, gids in chosen.candidate.node_gids for g in gids)
        return out

    fresh = gpus_of(SimpleNamespace(dep_gpus={}, dep_nodes={}), slots)
    assert sorted(fresh["a"]) == [0, 1] and sorted(fresh["b"]) == [0, 1]
    slots = [(0, 0, [(0, [0])]), (0, 0, [(0, [1])]), (0, 0, [(0, [2])]), (0, 0, [(0, [2])])]
    earlier = gpus_of(SimpleNamespace(dep_gpus={"a": {0: 1}}, dep_nodes={"a": {0: 1}}), slots)
    assert sorted(earlier["a"]) == [1, 2] and sorted(earlier["b"]) == [0, 2]
