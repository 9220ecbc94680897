"""The engine harness itself: up, update, replace, refresh drift, check failures and destroy through the real
dynamic-provider host, with a toy provider that keeps files."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
from harness.pulumi_engine import CheckFailed, StackHarness
from harness.toy_provider import FileResource

TESTS_DIR = Path(__file__).parent


def make_harness(tmp_path: Path, files: dict[str, str]) -> StackHarness:
    def program() -> None:
        for name, content in files.items():
            res = FileResource(name, str(tmp_path / f"{name}.txt"), content)
            pulumi.export(f"{name}_size", res.size)

    return StackHarness(program, state_path=tmp_path / "state.json", cwd=TESTS_DIR, env={"PYTHONPATH": str(TESTS_DIR)})


def test_lifecycle_through_the_real_provider_host(tmp_path: Path) -> None:
    files = {"a": "hello", "b": "world!"}
    harness = make_harness(tmp_path, files)

    preview = harness.preview()
    assert sorted(preview.ops("would-create")) == ["a", "b"]
    assert not (tmp_path / "a.txt").exists()  # preview creates nothing

    up = harness.up()
    assert sorted(up.ops("create")) == ["a", "b"]
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert up.outputs == {"a_size": 5, "b_size": 6}

    again = harness.up()
    assert again.ops("create") == [] and again.ops("update") == []

    files["b"] = "changed content"
    changed = harness.up()
    assert changed.ops("update") == ["b"]  # a is untouched
    assert changed.outputs["b_size"] == len("changed content")

    (tmp_path / "a.txt").write_text("drifted")
    refreshed = harness.refresh()
    assert refreshed.drift == {"a": {"content": "drifted", "size": 7}}
    (tmp_path / "b.txt").unlink()
    assert harness.refresh().drift == {"b": {"deleted": True}}
    assert [r.name for r in harness.load_state()] == ["a"]

    del files["a"]
    files["c"] = "new"
    removed = harness.up()
    assert sorted(removed.ops("create")) == ["b", "c"]  # b was deleted out of band
    assert removed.ops("delete") == ["a"]
    assert not (tmp_path / "a.txt").exists()

    created_order = [r.name for r in harness.load_state()]
    destroyed = harness.destroy()
    assert destroyed.ops("delete") == list(reversed(created_order))
    assert not list(tmp_path.glob("*.txt"))
    assert harness.load_state() == []


def test_check_failure_stops_before_anything_is_created(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, {"ok": "fine", "bad": "forbidden words"})
    with pytest.raises(CheckFailed, match="content may not say 'forbidden'"):
        harness.up()
    assert not (tmp_path / "bad.txt").exists()
