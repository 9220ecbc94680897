"""Catalog data: every entry loads, lookups resolve, and the shipped facts are self-consistent.

The numbers asserted here are the independently checked facts (nvidia-smi totals, KV bytes per token
from the shared reference table, model-card parameter counts); a wrong digit in a data file fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.resources import files
from importlib.resources.abc import Traversable

import pytest

from gpustack_pulumi import catalog
from gpustack_pulumi.catalog import (
    CatalogModel,
    GpuSpec,
    UnknownGpuError,
    UnknownInstanceTypeError,
    UnknownModelError,
    aws_instance,
    aws_instances,
    catalog_model,
    catalog_models,
    gpu,
    gpu_for_product,
    gpus,
    tuned_models,
)

MIB = 2**20
KIB = 2**10

REQUIRED_GPU_KEYS = {
    "A100-40GB-SXM",
    "A100-40GB-PCIe",
    "A100-80GB-SXM",
    "A100-80GB-PCIe",
    "H100-SXM",
    "H100-PCIe",
    "H100-NVL",
    "H200",
    "L40S",
    "L4",
    "A10G",
    "T4",
    "B200",
    "MI300X",
    "Ascend-910B3",
}

TUNED_MODEL_IDS = {
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-235B-A22B",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "zai-org/GLM-4.5-Air",
    "zai-org/GLM-4.6",
    "deepseek-ai/DeepSeek-R1",
    "deepseek-ai/DeepSeek-V3.2",
}
REFERENCE_MODEL_IDS = {"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-Next-80B-A3B-Instruct"}


# --- GPUs --------------------------------------------------------------------------------------------


def test_every_required_gpu_is_in_the_catalog_with_sources() -> None:
    specs = gpus()
    assert {spec.key for spec in specs} >= REQUIRED_GPU_KEYS
    assert len({spec.key for spec in specs}) == len(specs)
    for spec in specs:
        assert isinstance(spec, GpuSpec)
        assert spec.sources, spec.key
        assert all(source.strip() for source in spec.sources)


@pytest.mark.parametrize("spec", gpus(), ids=lambda spec: spec.key)
def test_every_driver_name_maps_back_to_its_entry(spec: GpuSpec) -> None:
    for name in spec.names:
        assert gpu(name) is spec
        assert gpu_for_product(name) is spec
        assert gpu_for_product(name, memory_bytes=spec.memory_bytes) is spec
        assert gpu_for_product(f"  {name}  ") is spec


@pytest.mark.parametrize(
    ("name", "mib"),
    [
        ("NVIDIA A100-SXM4-40GB", 40960),
        ("NVIDIA A100-PCIE-40GB", 40960),
        ("NVIDIA A100-SXM4-80GB", 81920),
        ("NVIDIA A100 80GB PCIe", 81920),
        ("NVIDIA H100 80GB HBM3", 81559),
        ("NVIDIA H100 PCIe", 81559),
        ("NVIDIA H100 NVL", 95830),
        ("NVIDIA H200", 143771),
        ("NVIDIA L40S", 46068),
        ("NVIDIA L4", 23034),
        ("NVIDIA A10G", 23028),
        ("Tesla T4", 15360),
        ("NVIDIA B200", 183359),
        ("910B3", 65536),
        ("910B4", 32768),
    ],
)
def test_memory_is_what_the_driver_reports(name: str, mib: int) -> None:
    assert gpu(name).memory_bytes == mib * MIB


def test_mi300x_memory_is_rocm_smi_total() -> None:
    assert gpu("AMD Instinct MI300X").memory_bytes == 205_822_885_888


@pytest.mark.parametrize("spec", gpus(), ids=lambda spec: spec.key)
def test_memory_figures_are_consistent(spec: GpuSpec) -> None:
    if spec.vendor == "nvidia":
        assert spec.memory_bytes % MIB == 0, "nvidia-smi reports whole MiB"
    # Drivers expose between the decimal-GB label and about 7 % above it (80 GB card: 81920 MiB).
    ratio = spec.memory_bytes / (spec.memory_marketing_gb * 10**9)
    assert 0.95 <= ratio <= 1.1, ratio


@pytest.mark.parametrize("spec", gpus(), ids=lambda spec: spec.key)
def test_capability_flags_follow_the_architecture(spec: GpuSpec) -> None:
    fp8_architectures = {"ada", "hopper", "blackwell", "cdna3"}
    assert spec.fp8 == (spec.arch in fp8_architectures)
    expected_capability = {"ampere": {"8.0", "8.6"}, "hopper": {"9.0"}, "ada": {"8.9"}, "turing": {"7.5"}}
    expected_capability["blackwell"] = {"10.0"}
    if spec.vendor == "nvidia":
        assert spec.compute_capability in expected_capability[spec.arch]
    else:
        assert spec.compute_capability is None
    if spec.bf16_dense_tflops is not None and spec.fp16_dense_tflops is not None:
        assert spec.bf16_dense_tflops == spec.fp16_dense_tflops


def test_t4_has_no_bf16_and_l4_has_fp8() -> None:
    t4 = gpu("T4")
    assert t4.bf16_dense_tflops is None
    assert t4.fp16_dense_tflops == 65
    assert gpu("L4").fp8 is True
    assert gpu("A100-80GB-SXM").fp8 is False


@pytest.mark.parametrize(
    ("alias", "key"),
    [
        ("h100", "H100-SXM"),
        ("H100 SXM", "H100-SXM"),
        ("h100_sxm", "H100-SXM"),
        ("H100-SXM", "H100-SXM"),
        ("h100-pcie", "H100-PCIe"),
        ("H100 NVL", "H100-NVL"),
        ("a100-80g", "A100-80GB-SXM"),
        ("A100", "A100-80GB-SXM"),
        ("a100-40g", "A100-40GB-SXM"),
        ("a100 80gb pcie", "A100-80GB-PCIe"),
        ("nvidia h100 80gb hbm3", "H100-SXM"),
        ("h200", "H200"),
        ("l40s", "L40S"),
        ("L4", "L4"),
        ("a10g", "A10G"),
        ("tesla t4", "T4"),
        ("t4", "T4"),
        ("b200", "B200"),
        ("mi300x", "MI300X"),
        ("910b3", "Ascend-910B3"),
        ("ascend_910b4", "Ascend-910B4"),
    ],
)
def test_aliases_and_keys_resolve(alias: str, key: str) -> None:
    assert gpu(alias).key == key


def test_unknown_gpu_error_lists_every_valid_key() -> None:
    with pytest.raises(UnknownGpuError) as raised:
        gpu("H100-SMX")
    error = raised.value
    assert isinstance(error, LookupError)
    assert error.name == "H100-SMX"
    assert set(error.valid_keys) == {spec.key for spec in gpus()}
    message = str(error)
    assert "'H100-SMX'" in message
    for spec in gpus():
        assert spec.key in message


@pytest.mark.parametrize(
    ("product", "memory_mib", "key"),
    [
        ("nvidia h100 80gb hbm3", None, "H100-SXM"),
        ("NVIDIA H100 PCIe", 81920, "H100-PCIe"),  # a driver build that reports 81920 MiB
        ("AMD Instinct MI300X OAM", None, "MI300X"),
        ("NVIDIA A100-PCIE-80GB", None, "A100-80GB-PCIe"),
        ("NVIDIA A100 SXM", 81920, "A100-80GB-SXM"),
        ("NVIDIA A100 SXM", 40960, "A100-40GB-SXM"),
        ("Ascend910B4", None, "Ascend-910B4"),
        ("NVIDIA Tesla T4", None, "T4"),
    ],
)
def test_gpu_for_product_recognises_variants_of_known_cards(product: str, memory_mib: int | None, key: str) -> None:
    memory_bytes = None if memory_mib is None else memory_mib * MIB
    found = gpu_for_product(product, memory_bytes=memory_bytes)
    assert found is not None
    assert found.key == key


@pytest.mark.parametrize(
    ("product", "memory_mib"),
    [
        ("NVIDIA GeForce RTX 4090", None),  # not in the catalog
        ("NVIDIA A10", None),  # the A10 is not the AWS A10G
        ("NVIDIA L40", None),  # nor is the L40 the L40S
        ("NVIDIA H200 NVL", None),  # a variant the catalog does not have
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),  # a MIG slice is not the whole card
        ("NVIDIA A100 SXM", None),  # 40 GB or 80 GB: ambiguous without a memory size
        ("NVIDIA H100 80GB HBM3", 46068),  # name and memory disagree
        ("NVIDIA A100-SXM-64GB", None),  # a size no A100 entry has
    ],
)
def test_gpu_for_product_returns_none_rather_than_guessing(product: str, memory_mib: int | None) -> None:
    memory_bytes = None if memory_mib is None else memory_mib * MIB
    assert gpu_for_product(product, memory_bytes=memory_bytes) is None


def test_gpu_lookup_names_never_collide() -> None:
    owners: dict[str, str] = {}
    for spec in gpus():
        for lookup_name in (spec.key, *spec.aliases, *spec.names):
            normalised = catalog.normalise_gpu_name(lookup_name)
            assert owners.setdefault(normalised, spec.key) == spec.key, lookup_name
    families = [(spec.family, spec.variant_tokens, spec.memory_marketing_gb) for spec in gpus()]
    assert len(families) == len(set(families)), "two entries gpu_for_product cannot tell apart"


# --- AWS instance types ------------------------------------------------------------------------------


def test_every_aws_instance_references_an_existing_gpu() -> None:
    instances = aws_instances()
    assert {instance.family for instance in instances} == {
        "g4dn",
        "g5",
        "g6",
        "g6e",
        "p4d",
        "p4de",
        "p5",
        "p5e",
        "p5en",
        "p6-b200",
    }
    for instance in instances:
        assert gpu(instance.gpu).key == instance.gpu
        assert instance.sources
        assert instance.instance_type.startswith(instance.family + ".")


@pytest.mark.parametrize(
    ("instance_type", "gpu_key", "gpu_count", "vcpus", "memory_gib"),
    [
        ("g4dn.xlarge", "T4", 1, 4, 16),
        ("g4dn.12xlarge", "T4", 4, 48, 192),
        ("g4dn.metal", "T4", 8, 96, 384),
        ("g5.12xlarge", "A10G", 4, 48, 192),
        ("g5.24xlarge", "A10G", 4, 96, 384),
        ("g5.48xlarge", "A10G", 8, 192, 768),
        ("g6.12xlarge", "L4", 4, 48, 192),
        ("g6.48xlarge", "L4", 8, 192, 768),
        ("g6e.xlarge", "L40S", 1, 4, 32),
        ("g6e.24xlarge", "L40S", 4, 96, 768),
        ("g6e.48xlarge", "L40S", 8, 192, 1536),
        ("p4d.24xlarge", "A100-40GB-SXM", 8, 96, 1152),
        ("p4de.24xlarge", "A100-80GB-SXM", 8, 96, 1152),
        ("p5.48xlarge", "H100-SXM", 8, 192, 2048),
        ("p5.4xlarge", "H100-SXM", 1, 16, 256),
        ("p5e.48xlarge", "H200", 8, 192, 2048),
        ("p5en.48xlarge", "H200", 8, 192, 2048),
        ("p6-b200.48xlarge", "B200", 8, 192, 2048),
    ],
)
def test_aws_instance_facts(instance_type: str, gpu_key: str, gpu_count: int, vcpus: int, memory_gib: int) -> None:
    instance = aws_instance(instance_type)
    assert (instance.gpu, instance.gpu_count, instance.vcpus, instance.memory_gib) == (
        gpu_key,
        gpu_count,
        vcpus,
        memory_gib,
    )


def test_every_size_of_the_single_gpu_families_is_present() -> None:
    known = {instance.instance_type for instance in aws_instances()}
    for family in ("g4dn", "g5", "g6", "g6e"):
        for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"):
            assert f"{family}.{size}" in known
    assert "g4dn.metal" in known
    for family in ("g5", "g6", "g6e"):
        assert f"{family}.24xlarge" in known
        assert f"{family}.48xlarge" in known


def test_aws_instance_lookup_ignores_case_and_whitespace() -> None:
    assert aws_instance(" P5.48XLARGE ").instance_type == "p5.48xlarge"


def test_unknown_instance_type_suggests_close_matches() -> None:
    with pytest.raises(UnknownInstanceTypeError) as raised:
        aws_instance("p5.48xlarg")
    error = raised.value
    assert isinstance(error, LookupError)
    assert "p5.48xlarge" in error.close_matches
    assert "p5.48xlarge" in str(error)


def test_unknown_instance_type_without_close_match_lists_all_types() -> None:
    with pytest.raises(UnknownInstanceTypeError) as raised:
        aws_instance("m7i.large")
    message = str(raised.value)
    assert raised.value.close_matches == ()
    for instance in aws_instances():
        assert instance.instance_type in message


# --- Models ------------------------------------------------------------------------------------------


def test_catalog_models_are_the_tuned_presets_and_reference_models() -> None:
    assert {model.id for model in tuned_models()} == TUNED_MODEL_IDS
    assert {model.id for model in catalog_models()} == TUNED_MODEL_IDS | REFERENCE_MODEL_IDS
    for model in catalog_models():
        assert isinstance(model, CatalogModel)
        assert model.tuned == (model.id in TUNED_MODEL_IDS)
        assert model.published.sources


@pytest.mark.parametrize("model", catalog_models(), ids=lambda model: model.id)
def test_every_model_config_has_the_core_architecture_fields(model: CatalogModel) -> None:
    config = model.config()
    for field in ("architectures", "model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        assert field in config, field
    assert isinstance(config["num_attention_heads"], int)
    assert config["hidden_size"] > 0
    assert config["num_hidden_layers"] > 0
    assert config["vocab_size"] > 0


def test_config_returns_a_fresh_dict_each_call() -> None:
    model = catalog_model("Qwen/Qwen3-8B")
    first = model.config()
    first["hidden_size"] = 1
    assert model.config()["hidden_size"] == 4096


@pytest.mark.parametrize("name", ["Qwen/Qwen3-8B", "qwen/qwen3-8b", "Qwen3-8B", "qwen3-8b", " Qwen3-8B "], ids=repr)
def test_catalog_model_lookup_accepts_id_or_bare_name(name: str) -> None:
    assert catalog_model(name).id == "Qwen/Qwen3-8B"


def test_unknown_model_error_lists_valid_ids() -> None:
    with pytest.raises(UnknownModelError) as raised:
        catalog_model("Qwen/Qwen3-9B")
    error = raised.value
    assert isinstance(error, LookupError)
    for model in catalog_models():
        assert model.id in str(error)
    assert set(error.valid_ids) == {model.id for model in catalog_models()}


def _kv_bytes_per_token_bf16(config: dict) -> int:
    """KV cache bytes per token at 16 bits and TP1 (shared reference notes, engines-and-memory.md §2).

    MLA stores one latent of kv_lora_rank + qk_rope_head_dim per layer; GQA stores K and V per KV head.
    Only full-attention layers grow with the context (gpt-oss sliding and Qwen3-Next linear layers don't).
    """
    bytes_per_value = 2
    layers = config["num_hidden_layers"]
    if "kv_lora_rank" in config:
        return layers * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * bytes_per_value
    if "layer_types" in config:
        layers = config["layer_types"].count("full_attention")
    elif "full_attention_interval" in config:
        layers //= config["full_attention_interval"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    return 2 * layers * kv_heads * head_dim * bytes_per_value


@pytest.mark.parametrize(
    ("model_id", "expected_bytes"),
    [
        ("Qwen/Qwen3-0.6B", 112 * KIB),
        ("Qwen/Qwen3-8B", 144 * KIB),
        ("Qwen/Qwen3-32B", 256 * KIB),
        ("Qwen/Qwen3-30B-A3B", 96 * KIB),
        ("Qwen/Qwen3-235B-A22B", 192_512),  # 2·94·4·128·2 = 188 KiB
        ("meta-llama/Llama-3.1-8B-Instruct", 128 * KIB),
        ("zai-org/GLM-4.5-Air", 184 * KIB),
        ("deepseek-ai/DeepSeek-R1", 70_272),  # MLA: 61·(512+64)·2 = 68.6 KiB
        ("deepseek-ai/DeepSeek-V3.2", 70_272),  # same MLA cache before the fp8_ds_mla / indexer terms
        ("openai/gpt-oss-120b", 36 * KIB),  # the 18 full-attention layers
        ("Qwen/Qwen3-Next-80B-A3B-Instruct", 24 * KIB),  # 12 of 48 layers are full attention
    ],
)
def test_kv_bytes_per_token_match_the_reference_table(model_id: str, expected_bytes: int) -> None:
    assert _kv_bytes_per_token_bf16(catalog_model(model_id).config()) == expected_bytes


def test_model_specific_architecture_fields() -> None:
    gpt_oss = catalog_model("openai/gpt-oss-120b").config()
    assert gpt_oss["quantization_config"]["quant_method"] == "mxfp4"
    assert gpt_oss["sliding_window"] == 128
    assert gpt_oss["layer_types"].count("sliding_attention") == 18
    assert (gpt_oss["num_local_experts"], gpt_oss["num_experts_per_tok"]) == (128, 4)
    assert catalog_model("openai/gpt-oss-20b").config()["num_local_experts"] == 32

    glm_air = catalog_model("GLM-4.5-Air").config()
    assert (glm_air["num_attention_heads"], glm_air["head_dim"], glm_air["hidden_size"]) == (96, 128, 4096)
    assert (glm_air["n_routed_experts"], glm_air["first_k_dense_replace"]) == (128, 1)
    glm46 = catalog_model("GLM-4.6").config()
    assert (glm46["num_hidden_layers"], glm46["n_routed_experts"], glm46["max_position_embeddings"]) == (
        92,
        160,
        202752,
    )

    v32 = catalog_model("DeepSeek-V3.2").config()
    assert (v32["index_n_heads"], v32["index_head_dim"], v32["index_topk"]) == (64, 128, 2048)
    assert catalog_model("DeepSeek-R1").config()["quantization_config"]["weight_block_size"] == [128, 128]

    qwen_next = catalog_model("Qwen3-Next-80B-A3B-Instruct").config()
    assert (qwen_next["num_experts"], qwen_next["num_experts_per_tok"]) == (512, 10)


def _qwen_llama_parameters(config: dict) -> tuple[int, int, int]:
    """(total, active, non-embedding) parameter counts of a Qwen3 / Qwen3-MoE / Llama config.

    Per layer: attention q,k,v,o (no bias) + two RMSNorms (+ q/k head norms for Qwen3) + a SwiGLU MLP
    (3·h·I) or, for MoE, E experts of 3·h·I_moe plus an h·E router. Embeddings, the LM head (unless
    tied) and the final norm come on top. Kept here, in the test, only to prove the shipped configs
    reproduce the model cards; the analysis package owns the real counter.
    """
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    attention = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
    norms = 2 * h + (2 * head_dim if config["model_type"].startswith("qwen3") else 0)
    if "num_experts" in config:
        expert = 3 * h * config["moe_intermediate_size"]
        router = h * config["num_experts"]
        mlp_total = config["num_experts"] * expert + router
        mlp_active = config["num_experts_per_tok"] * expert + router
    else:
        mlp_total = mlp_active = 3 * h * config["intermediate_size"]
    layers = config["num_hidden_layers"]
    embedding = config["vocab_size"] * h
    head = 0 if config["tie_word_embeddings"] else embedding
    non_embedding = layers * (attention + norms + mlp_total) + h
    total = non_embedding + embedding + head
    active = layers * (attention + norms + mlp_active) + h + embedding + head
    return total, active, non_embedding


@pytest.mark.parametrize(
    "model_id",
    [
        "Qwen/Qwen3-0.6B",
        "Qwen/Qwen3-8B",
        "Qwen/Qwen3-32B",
        "Qwen/Qwen3-30B-A3B",
        "Qwen/Qwen3-235B-A22B",
        "meta-llama/Llama-3.1-8B-Instruct",
    ],
)
def test_configs_reproduce_the_published_parameter_counts(model_id: str) -> None:
    model = catalog_model(model_id)
    published = model.published
    total, active, non_embedding = _qwen_llama_parameters(model.config())
    assert abs(total - published.parameters_total) <= published.rounding_unit
    if published.parameters_active is not None:
        assert abs(active - published.parameters_active) <= published.rounding_unit
    if published.parameters_non_embedding is not None:
        assert abs(non_embedding - published.parameters_non_embedding) <= published.rounding_unit


@pytest.mark.parametrize("model", catalog_models(), ids=lambda model: model.id)
def test_published_figures_are_consistent(model: CatalogModel) -> None:
    published = model.published
    is_moe = any(key in model.config() for key in ("num_experts", "n_routed_experts", "num_local_experts"))
    assert (published.parameters_active is not None) == is_moe
    if published.parameters_active is not None:
        assert published.parameters_active < published.parameters_total
    if published.parameters_non_embedding is not None:
        assert published.parameters_non_embedding < published.parameters_total


def test_gpt_oss_checkpoint_sizes_are_the_published_ones() -> None:
    assert catalog_model("openai/gpt-oss-120b").checkpoint_bytes == round(60.8 * 2**30)
    assert catalog_model("openai/gpt-oss-20b").checkpoint_bytes == round(12.8 * 2**30)


def test_catalog_data_errors_are_value_errors() -> None:
    # A shipped-data mistake is a packaging bug, reported distinctly from a user's lookup error.
    assert issubclass(catalog.CatalogDataError, ValueError)
    assert not issubclass(catalog.CatalogDataError, LookupError)


# --- Schema: bad data fails with the field named ---------------------------------------------------


def _spec_fields(**changes: object) -> dict:
    return gpu("H100-SXM").model_dump() | changes


def test_gpu_spec_requires_compute_capability_exactly_for_nvidia() -> None:
    with pytest.raises(ValueError, match="compute_capability must be set for NVIDIA"):
        GpuSpec.model_validate(_spec_fields(compute_capability=None))
    with pytest.raises(ValueError, match="compute_capability"):
        GpuSpec.model_validate(_spec_fields(vendor="amd"))


def test_gpu_spec_rejects_unknown_fields_and_missing_sources() -> None:
    with pytest.raises(ValueError, match="memory_gb"):
        GpuSpec.model_validate(_spec_fields(memory_gb=80))
    with pytest.raises(ValueError, match="sources"):
        GpuSpec.model_validate(_spec_fields(sources=[]))


def test_catalog_model_config_path_must_follow_the_id() -> None:
    fields = catalog_model("Qwen/Qwen3-8B").model_dump(by_alias=True)
    with pytest.raises(ValueError, match=re.escape("models/Qwen/Qwen3-8B/config.json")):
        CatalogModel.model_validate(fields | {"config": "models/Qwen/Qwen3-32B/config.json"})


def test_every_data_file_is_covered_by_the_package_data_globs() -> None:
    # pyproject ships '*.yaml' at the package root and 'models/**/*.json'; anything else would be
    # missing from the wheel.
    root = files("gpustack_pulumi.catalog")

    def walk(node: Traversable, prefix: str = "") -> Iterator[str]:
        for child in node.iterdir():
            path = f"{prefix}{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    yield from walk(child, path + "/")
            else:
                yield path

    data_files = [path for path in walk(root) if not path.endswith(".py")]
    shipped_configs = {f"models/{model.id}/config.json" for model in catalog_models()}
    for path in data_files:
        top_level_yaml = "/" not in path and path.endswith(".yaml")
        assert top_level_yaml or path in shipped_configs, f"{path} is not shipped or not indexed"
    assert shipped_configs <= set(data_files)
