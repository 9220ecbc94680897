"""Engine options a deployment may set beyond placement's fields (the lead threads them through Deployment).

One typed model, validated once; engines read it and never re-parse user strings. Secrets are references
(names of Pulumi secrets), never values: their values reach the engine only through its environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

SpeculativeMethod = Literal["eagle3", "eagle", "mtp", "ngram", "draft_model"]
KvOffloadBackend = Literal["lmcache", "native", "hicache"]
LlamaCppServer = Literal["llama-cpp-python", "llama-server"]


class OptionsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpeculativeOptions(OptionsModel):
    """Speculative decoding. Engines translate the method into their own names (vLLM eagle3/mtp/ngram,
    SGLang EAGLE3/NEXTN/NGRAM, TensorRT-LLM Eagle3/MTP/NGram)."""

    method: SpeculativeMethod
    draft_model: str | None = Field(default=None, description="Draft model (eagle3, eagle, draft_model).")
    num_speculative_tokens: PositiveInt | None = Field(
        default=None,
        description="Tokens drafted per step: vLLM num_speculative_tokens, SGLang --speculative-num-steps and "
        "TensorRT-LLM max_draft_len (None: each engine's default).",
    )
    num_steps: PositiveInt | None = Field(default=None, description="SGLang --speculative-num-steps override.")
    eagle_topk: PositiveInt | None = Field(default=None, description="SGLang --speculative-eagle-topk.")
    num_draft_tokens: PositiveInt | None = Field(
        default=None, description="SGLang --speculative-num-draft-tokens (None: steps × topk + 1)."
    )
    prompt_lookup_min: PositiveInt | None = Field(default=None, description="ngram: shortest n-gram matched.")
    prompt_lookup_max: PositiveInt | None = Field(default=None, description="ngram: longest n-gram matched.")
    draft_model_bytes: int | None = Field(
        default=None, ge=0, description="Draft weights in bytes, when known; otherwise estimated from the target."
    )

    @model_validator(mode="after")
    def _draft_model_matches_method(self) -> SpeculativeOptions:
        needs_draft = self.method in ("eagle3", "eagle", "draft_model")
        if needs_draft and not self.draft_model:
            raise ValueError(f"speculative.draft_model is required for method '{self.method}'")
        if not needs_draft and self.draft_model:
            raise ValueError(
                f"speculative.draft_model is not used by method '{self.method}'; "
                "remove it or use eagle3, eagle or draft_model"
            )
        return self


class KvOffloadOptions(OptionsModel):
    """Extend the KV cache into host memory: LMCache or vLLM's native offload, SGLang HiCache."""

    backend: KvOffloadBackend
    host_bytes: int | None = Field(
        default=None, gt=0, description="Host memory per node for the offloaded KV cache, in bytes."
    )
    host_ratio: float | None = Field(
        default=None,
        gt=0,
        description="Host memory as a multiple of the GPU KV pool (SGLang --hicache-ratio); used when "
        "host_bytes is not set.",
    )


class EngineOptions(OptionsModel):
    """What a user may set about the engine of a deployment."""

    version: str | None = Field(default=None, description="Pinned engine version; None: the default.")
    image: str | None = Field(default=None, description="Container image override.")
    container: bool = Field(default=True, description="False: run the engine as a process on the node.")
    model_path: str | None = Field(
        default=None, description="Where the engine loads weights from; None: the deployment's model."
    )
    served_model_name: str | None = Field(default=None, description="API model name; None: deployment name.")
    host: str = Field(default="0.0.0.0", description="Address the engine binds.")
    port: int = Field(default=0, ge=0, le=65535, description="0: the agent assigns one.")
    distributed_port: int | None = Field(
        default=None,
        ge=1024,
        le=65535,
        description="Rendezvous port of multi-node replicas (vLLM --master-port, SGLang --dist-init-addr); "
        "None: derived from the deployment name and replica.",
    )
    multi_node_backend: Literal["mp", "ray"] = Field(
        default="mp",
        description="vLLM across nodes: its own multiprocessing rendezvous (--nnodes/--master-addr), or a Ray "
        "cluster started by the launch specs (--distributed-executor-backend ray).",
    )
    api_key_secret: str | None = Field(
        default=None, description="Reference of the secret holding the API key (passed through env only)."
    )
    hf_token_secret: str | None = Field(default=None, description="Reference of the Hugging Face token secret.")
    speculative: SpeculativeOptions | Literal["auto", "off"] = Field(
        default="auto",
        description="auto: turned on by mode latency when the model or a tuned preset provides a draft.",
    )
    kv_offload: KvOffloadOptions | None = None
    auto_fp8: bool = Field(
        default=True, description="Mode throughput may serve a bf16 checkpoint with online FP8 on FP8 GPUs."
    )
    use_presets: bool = Field(default=True, description="Apply measured tuned presets where one matches.")
    trust_remote_code: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    extra_args: list[str] = Field(
        default_factory=list, description="Extra engine flags; checked against the version's flag table."
    )
    extra_env: dict[str, str] = Field(default_factory=dict)
    llamacpp_server: LlamaCppServer = Field(
        default="llama-cpp-python", description="llama.cpp front end: the Python server or llama-server."
    )
    python: str = Field(
        default="python3", description="Interpreter of Python-launched engines (SGLang, llama-cpp-python)."
    )
    n_gpu_layers: int | None = Field(default=None, ge=-1, description="llama.cpp layers offloaded; None: all.")
    custom_argv: list[str] | None = Field(
        default=None, description="engine 'custom': argv template with {model}, {port}, {tp}, ... placeholders."
    )
    custom_health_path: str | None = Field(default="/v1/models", description="engine 'custom' health path.")
    custom_metrics_path: str | None = Field(default=None, description="engine 'custom' metrics path.")

    @model_validator(mode="after")
    def _secrets_not_in_extra(self) -> EngineOptions:
        for argument in self.extra_args:
            name = argument.split("=", 1)[0]
            if name in SECRET_FLAGS:
                raise ValueError(
                    f"extra_args: {name} would put a secret on the command line; set api_key_secret or "
                    "hf_token_secret instead (passed through the environment)"
                )
        for name in self.extra_env:
            if name in SECRET_ENV_NAMES:
                raise ValueError(
                    f"extra_env: {name} is a secret; set api_key_secret or hf_token_secret instead "
                    "(a Pulumi secret reference, never a plain value)"
                )
        return self


# Flags that carry secrets in some engine: never accepted from users, never generated.
SECRET_FLAGS = frozenset({"--api-key", "--api_key", "--hf-token", "-hft", "--hf_token"})
SECRET_ENV_NAMES = frozenset({"VLLM_API_KEY", "API_KEY", "LLAMA_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
