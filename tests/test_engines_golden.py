"""Golden launch specs for every tuned model × mode × a few GPUs × engine (vLLM and SGLang at every pinned
version, plus what ``engine: auto`` picks), committed under tests/engines_golden/ and reviewed as data.

Every argv produced here is checked against the pinned version's flag table (the engine's own parser): an
unknown or misspelt flag fails. Regenerate after an intended change with
``UPDATE_ENGINE_GOLDEN=1 .venv/bin/pytest tests/test_engines_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpustack_pulumi.analysis import analyze
from gpustack_pulumi.analysis.profile import ModelProfile
from gpustack_pulumi.catalog import gpu
from gpustack_pulumi.engines import EngineOptions, EngineRefusal, NodeAccelerator
from gpustack_pulumi.engines.auto import select_engine
from gpustack_pulumi.engines.launch import build_context
from gpustack_pulumi.engines.registry import get_engine
from gpustack_pulumi.engines.versions import engine_version, known_versions
from gpustack_pulumi.placement.memory.sglang import default_mem_fraction_static
from gpustack_pulumi.placement.models import Deployment, NodePlacement, PlacedReplica

GOLDEN_DIR = Path(__file__).parent / "engines_golden"
UPDATE = os.environ.get("UPDATE_ENGINE_GOLDEN") == "1"

TUNED_MODELS = (
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-235B-A22B",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "zai-org/GLM-4.5-Air",
    "zai-org/GLM-4.6",
    "deepseek-ai/DeepSeek-R1",
    "deepseek-ai/DeepSeek-V3.2",
)
MODES = ("latency", "balanced", "throughput")
GPUS = ("H100-SXM", "H200", "A100-80GB-SXM")
GPUS_PER_NODE = 8
MAX_MODEL_LEN = 32768
VLLM_FRACTION = 0.9  # a placement-like fraction for the goldens (placement computes the real one)
WEIGHT_SHARE = 0.75  # weights may take this share of a GPU in the goldens' TP choice


def replica_shape(profile: ModelProfile, memory_bytes: int) -> tuple[int, int]:
    """The smallest valid TP (then 2 nodes with PP2) whose weights per GPU fit — a stand-in for placement."""
    for pp in (1, 2):
        for tp in (1, 2, 4, 8):
            if profile.constraints.tp_problems(tp):
                continue
            if profile.weights_per_rank(tp, pp) <= WEIGHT_SHARE * memory_bytes:
                return tp, pp
    raise AssertionError(f"{profile.model_id} does not fit 2 nodes of {memory_bytes} B GPUs")


def make_case(model: str, mode: str, gpu_key: str, engine: str) -> tuple:
    profile = analyze(model)
    spec = gpu(gpu_key)
    tp, pp = replica_shape(profile, spec.memory_bytes)
    sglang_fraction = default_mem_fraction_static(profile, spec.memory_bytes, tp, pp)
    fraction = sglang_fraction if engine == "sglang" else VLLM_FRACTION
    claim = int(fraction * spec.memory_bytes)
    deployment = Deployment(name="golden", model=model, mode=mode, max_model_len=MAX_MODEL_LEN, engine="auto")
    nodes = [f"node-{index}" for index in range(pp)]
    replica = PlacedReplica(
        deployment="golden",
        replica=0,
        engine=engine,
        placements=[
            NodePlacement(node=node, device_indices=list(range(tp)), memory_bytes_per_device=claim) for node in nodes
        ],
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        memory_fraction=fraction,
        reason="golden",
    )
    accelerators = {node: NodeAccelerator.from_gpu(spec) for node in nodes}
    addresses = {node: f"192.0.2.{index + 1}" for index, node in enumerate(nodes)}  # TEST-NET-1, never contacted
    return profile, deployment, replica, accelerators, addresses


def render_case(model: str, mode: str, gpu_key: str) -> dict:
    document: dict = {}
    for engine in ("vllm", "sglang"):
        for version in known_versions(engine):
            profile, deployment, replica, accelerators, addresses = make_case(model, mode, gpu_key, engine)
            options = EngineOptions(version=version, api_key_secret="pulumi:api-key", hf_token_secret="pulumi:hf")
            context = build_context(
                replica, profile, deployment, accelerators=accelerators, node_addresses=addresses, options=options
            )
            try:
                specs = get_engine(engine).launch_specs(context)
            except EngineRefusal as refusal:
                document[f"{engine} {version}"] = {"refused": str(refusal)}
                continue
            document[f"{engine} {version}"] = {
                "specs": [spec.model_dump(mode="json") for spec in specs],
                "extra_memory": get_engine(engine).extra_memory(context).model_dump(mode="json"),
            }
    profile, deployment, replica, accelerators, _ = make_case(model, mode, gpu_key, "vllm")
    choice = select_engine(deployment, profile, accelerators["node-0"], gpu_count=replica.tensor_parallel_size)
    document["auto"] = choice.model_dump(mode="json")
    return document


def golden_path(model: str) -> Path:
    return GOLDEN_DIR / f"{model.replace('/', '__')}.json"


@pytest.mark.parametrize("model", TUNED_MODELS)
def test_golden_launch_specs(model: str) -> None:
    rendered = {f"{mode} {gpu_key}": render_case(model, mode, gpu_key) for mode in MODES for gpu_key in GPUS}
    text = json.dumps(rendered, indent=1, sort_keys=True) + "\n"
    path = golden_path(model)
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with UPDATE_ENGINE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"launch specs of {model} changed; review and regenerate {path}"


@pytest.mark.parametrize("model", TUNED_MODELS)
def test_every_golden_argv_is_accepted_by_its_pinned_version(model: str) -> None:
    """The committed argv, flag by flag, against the parser of the version it names."""
    golden = json.loads(golden_path(model).read_text())
    checked = 0
    for case in golden.values():
        for key, result in case.items():
            if key == "auto":
                continue
            assert "specs" in result, f"{model} {key} was refused: {result}"
            for spec in result["specs"]:
                table = engine_version(spec["engine"], spec["engine_version"]).flag_table
                assert table.problems(spec["argv"][spec["command_length"] :]) == [], spec["argv"]
                checked += 1
    assert checked >= len(MODES) * len(GPUS) * 4  # 2 engines × 2 versions at least


@pytest.mark.parametrize("model", TUNED_MODELS)
def test_no_secret_value_or_secret_flag_in_any_golden(model: str) -> None:
    golden = golden_path(model).read_text()
    assert "--api-key" not in golden.replace('"--api-key": "SGLANG_API_KEY"', "")  # only the launcher's mapping
    for case in json.loads(golden).values():
        for key, result in case.items():
            if key == "auto":
                continue
            for spec in result["specs"]:
                head = spec["node_role"] == "head"
                expected_key_env = {"vllm": "VLLM_API_KEY", "sglang": "SGLANG_API_KEY"}[spec["engine"]]
                assert spec["secret_env"].get("HF_TOKEN") == "pulumi:hf"
                assert (spec["secret_env"].get(expected_key_env) == "pulumi:api-key") is head
