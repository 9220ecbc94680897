"""The `local` stack program runs under Pulumi mocks (no CLI) and exports the estimate."""

from __future__ import annotations

import runpy
from pathlib import Path

import pulumi
import pytest

STACK = Path(__file__).resolve().parents[1] / "stacks" / "local" / "__main__.py"


class NoResources(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):  # pragma: no cover - the stack creates none yet
        raise AssertionError(f"unexpected resource {args.typ}")

    def call(self, args: pulumi.runtime.MockCallArgs):  # pragma: no cover
        return {}


@pytest.fixture
def mocked_stack(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PULUMI_CONFIG", '{"gpustack:model": "Qwen/Qwen3-0.6B", "gpustack:gpu": "L4"}')
    pulumi.runtime.set_mocks(NoResources(), preview=True)
    yield
    pulumi.runtime.settings.reset_options()


@pulumi.runtime.test
def test_local_stack_exports_the_estimate(mocked_stack) -> None:
    exports: dict[str, object] = {}
    original = pulumi.export
    try:
        pulumi.export = lambda name, value: exports.__setitem__(name, value)  # type: ignore[assignment]
        runpy.run_path(str(STACK), run_name="__main__")
    finally:
        pulumi.export = original  # type: ignore[assignment]
    assert exports["model"] == "Qwen/Qwen3-0.6B"
    assert exports["fits"] is True
    assert set(exports["memory_per_gpu"]) >= {"weights", "kv_cache"}
