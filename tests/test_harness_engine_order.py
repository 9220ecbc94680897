"""The harness behaves like the Pulumi engine where it matters for placement: resources registered together are
all checked before any is created, and their creates run concurrently. A provider that places itself at check,
alone, collides under it — as replicas placing themselves one at a time did under the real engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.pulumi_engine import ProviderError, StackHarness
from harness.toy_provider import GreedySlot

TESTS_DIR = Path(__file__).parent


def events(directory: Path) -> list[tuple[str, str, float, float]]:
    rows = [line.split() for line in (directory / "events.log").read_text().splitlines()]
    return [(event, name, float(start), float(end)) for event, name, start, end in rows]


def test_checks_come_before_creates_and_creates_overlap_so_greedy_placement_collides(tmp_path: Path) -> None:
    slots = tmp_path / "slots"
    slots.mkdir()

    def program() -> None:
        for name in ("r0", "r1", "r2"):
            GreedySlot(name, str(slots))

    harness = StackHarness(
        program, state_path=tmp_path / "state.json", cwd=TESTS_DIR, env={"PYTHONPATH": str(TESTS_DIR)}
    )
    with pytest.raises(ProviderError, match=r"slot-0 is taken \(409\)"):
        harness.up()
    log = events(slots)
    checks = [row for row in log if row[0] == "check"]
    creates = [row for row in log if row[0] == "create"]
    assert len(checks) == 3 and len(creates) == 1  # all three chose slot-0 at check; one create won
    assert max(end for _, _, _, end in checks) <= min(start for _, _, start, _ in creates)
    assert [p.name for p in slots.glob("slot-*")] == ["slot-0"]


def test_creates_run_concurrently(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(3)]

    def program() -> None:
        for index, directory in enumerate(dirs):
            directory.mkdir(exist_ok=True)
            GreedySlot(f"r{index}", str(directory))  # separate slot folders: no collision

    harness = StackHarness(
        program, state_path=tmp_path / "state.json", cwd=TESTS_DIR, env={"PYTHONPATH": str(TESTS_DIR)}
    )
    harness.up()
    creates = [row for directory in dirs for row in events(directory) if row[0] == "create"]
    assert len(creates) == 3
    # Each create sleeps 0.3 s; run one after another they would span ≥ 0.9 s.
    span = max(end for *_, end in creates) - min(start for _, _, start, _ in creates)
    assert span < 0.8, span
