"""Flag tables per pinned version (data dumped from the engines' own parsers) and the presets data."""

from __future__ import annotations

import argparse

import pytest

from gpustack_pulumi.catalog import gpus, tuned_models
from gpustack_pulumi.engines.presets import find_preset, presets
from gpustack_pulumi.engines.versions import engine_version, flag_table, known_versions

ENGINES = ("vllm", "sglang", "tensorrt-llm", "mindie", "llama.cpp")


@pytest.mark.parametrize("engine", ENGINES)
def test_every_pinned_version_loads_and_names_its_source(engine: str) -> None:
    assert known_versions(engine)
    for version in known_versions(engine):
        pinned = engine_version(engine, version)
        table = pinned.flag_table
        if engine == "mindie":
            assert table is None  # configured by config.json, not flags
            continue
        assert table is not None and table.source and len(table.flags) > 10
        if engine in ("vllm", "sglang", "llama.cpp") and version != "llama-server":
            assert table.version == version  # dumped from that exact package


@pytest.mark.parametrize("engine", ENGINES)
def test_every_version_spelling_is_a_flag_of_that_version(engine: str) -> None:
    for version in known_versions(engine):
        pinned = engine_version(engine, version)
        for knob, template in pinned.spellings.items():
            flags = [part for part in template if part.startswith("-")]
            assert flags, knob
            for flag in flags:
                assert pinned.flag_table.accepts(flag), f"{engine} {version} {knob}: {flag}"


def test_the_tables_record_the_renames_between_versions() -> None:
    """What the version data exists for: spellings that one pinned version accepts and the other rejects."""
    sglang_new, sglang_old = flag_table("sglang-0.5.23.json"), flag_table("sglang-0.5.10.json")
    assert sglang_new.accepts("--cuda-graph-max-bs-decode") and not sglang_old.accepts("--cuda-graph-max-bs-decode")
    assert sglang_old.accepts("--cuda-graph-max-bs") and not sglang_new.accepts("--cuda-graph-max-bs")
    assert sglang_new.accepts("--attn-dp-size") and not sglang_old.accepts("--attn-dp-size")
    vllm_new, vllm_old = flag_table("vllm-0.33.0.json"), flag_table("vllm-0.19.0.json")
    assert vllm_new.accepts("--spec-method") and not vllm_old.accepts("--spec-method")
    assert vllm_new.accepts("--disable-prefix-caching") and not vllm_old.accepts("--disable-prefix-caching")


def test_flag_table_catches_misspellings_missing_values_and_bad_choices() -> None:
    table = flag_table("vllm-0.33.0.json")
    problems = table.problems(
        ["--tensor-parallel-size", "2", "--max-num-seq", "8", "--performance-mode", "fast", "--max-model-len"]
    )
    assert len(problems) == 3
    assert "no flag --max-num-seq; did you mean --max-num-seqs" in problems[0]
    assert "'fast' is not one of balanced, interactivity, throughput" in problems[1]
    assert "--max-model-len needs a value" in problems[2]
    assert table.problems(["--enable-expert-parallel", "--kv-cache-dtype=fp8", "--port", "{port}"]) == []
    assert flag_table("llama-cpp-python-0.3.36.json").problems(["--n_gpu_layers", "-1"]) == []


def test_stored_llama_cpp_python_table_matches_the_installed_parser() -> None:
    """The one engine installed here: its live parser and the stored table agree flag for flag."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import Settings

    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    parser.add_argument("--config_file")
    live = {option for option in parser._option_string_actions if option not in ("-h", "--help")}
    table = flag_table("llama-cpp-python-0.3.36.json")
    assert llama_cpp.__version__ == table.version
    assert live == set(table.flags)


def test_presets_reference_catalog_gpus_tuned_models_and_a_source() -> None:
    keys = {spec.key for spec in gpus()}
    tuned = {model.id for model in tuned_models()}
    for preset in presets():
        assert set(preset.gpus) <= keys, preset.id
        assert preset.model in tuned, f"{preset.id}: presets exist only for tuned catalog models"
        assert preset.source.startswith("https://github.com/gpustack/gpustack/blob/main/docs/performance-lab/")
        assert "%" in preset.claimed_gain or "x" in preset.claimed_gain


def test_find_preset_matches_model_gpu_mode_and_engine() -> None:
    assert find_preset("qwen/qwen3-8b", "H100-SXM", "latency").id == "qwen3-8b-h100-latency"
    assert find_preset("Qwen/Qwen3-8B", "H100-SXM", "latency", "vllm") is None
    assert find_preset("Qwen/Qwen3-8B", "L4", "latency") is None
    assert find_preset("Qwen/Qwen3-8B", None, "latency") is None
