"""The filter → score → select framework: protocols, registry, score ranges, and the heuristic's two passes."""

from __future__ import annotations

import pytest
from placement_helpers import TEST_GPU, dep, inventory, len_factory, node
from pydantic import ValidationError

from gpustack_pulumi.placement import Deployment, plan
from gpustack_pulumi.placement import scorers as scorers_module
from gpustack_pulumi.placement.filters import CLASS_FILTERS, Filter
from gpustack_pulumi.placement.scorers import SCORER_REGISTRY, STRATEGY_WEIGHTS, ScorePipeline, Scorer


def test_every_filter_and_scorer_conforms_to_its_protocol():
    assert all(isinstance(f, Filter) for f in CLASS_FILTERS)
    for name, factory in SCORER_REGISTRY.items():
        scorer = factory()
        assert isinstance(scorer, Scorer)
        assert scorer.name == name
    for weights in STRATEGY_WEIGHTS.values():
        assert set(weights) <= set(SCORER_REGISTRY)


def test_pipeline_rejects_unknown_scorers_and_out_of_range_scores(monkeypatch):
    with pytest.raises(ValueError, match="unknown scorers \\['nope'\\]"):
        ScorePipeline("binpack", {"nope": 1})

    class Broken:
        name = "broken"

        def score(self, candidate, state, deployment, mode):
            return 101

    monkeypatch.setitem(scorers_module.SCORER_REGISTRY, "broken", Broken)
    monkeypatch.setitem(scorers_module.STRATEGY_WEIGHTS, "binpack", {"broken": 1})
    other_gpu = ("Other GPU 10G", TEST_GPU[1], "9.0")
    inv = inventory(node("n", TEST_GPU, 1), node("m", other_gpu, 1))  # two classes: two candidates to score
    with pytest.raises(ValueError, match="scorer broken returned 101, outside 0–100"):
        plan(inv, [dep("a", max_model_len=2)], demand_factory=len_factory, exact=False)


def test_heuristic_tries_smallest_first_when_not_everything_fits():
    # One 10 GiB GPU: biggest-first places the 9 GiB replica and nothing else; smallest-first places three.
    inv = inventory(node("n", TEST_GPU, 1))
    result = plan(
        inv,
        [dep("big", max_model_len=9), dep("small", max_model_len=3, replicas=3)],
        demand_factory=len_factory,
        exact=False,
    )
    assert sorted(r.deployment for r in result.replicas) == ["small", "small", "small"]
    assert [u.deployment for u in result.unplaced] == ["big"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "bad name"}, "String should match pattern"),
        ({"engine": "vllm2"}, "unknown engine 'vllm2'"),
        ({"replicas": -1}, "greater than or equal to 0"),
        ({"concurrency": 0}, "greater than 0"),
        ({"mode": "fast"}, "'latency', 'throughput' or 'balanced'"),
    ],
)
def test_deployment_validation_names_the_problem(fields, message):
    with pytest.raises(ValidationError, match=message):
        Deployment.model_validate({"name": "ok", "model": "Qwen/Qwen3-8B", **fields})


def test_planner_rejects_bad_arguments():
    inv = inventory(node("n", TEST_GPU, 1))
    with pytest.raises(ValueError, match="strategy must be 'binpack' or 'spread'"):
        plan(inv, [], strategy="pack")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deployment name 'a' appears twice"):
        plan(inv, [dep("a"), dep("a")])
    with pytest.raises(TypeError, match="previous must be a Plan"):
        plan(inv, [], previous={"replicas": []})  # type: ignore[arg-type]
