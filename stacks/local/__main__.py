"""The `local` stack: this machine as the only node.

Until the deployment components land (issue "Deploy for real"), the stack plans only: it analyses the configured
model and exports its memory estimate on the configured GPU, so `pulumi preview` already shows whether it fits.
"""

import pulumi

from gpustack_pulumi.estimate import estimate_model

config = pulumi.Config("gpustack")
estimate = estimate_model(
    config.get("model") or "Qwen/Qwen3-8B",
    gpu=config.get("gpu") or "H100-SXM",
    engine=config.get("engine") or "vllm",
    max_model_len=config.get_int("maxModelLen") or 32768,
)
pulumi.export("model", estimate["model"])
pulumi.export("parameters_total", estimate["parameters_total"])
pulumi.export("weight_bytes", estimate["weight_bytes"])
pulumi.export("memory_per_gpu", estimate["memory"])
pulumi.export("max_kv_tokens", estimate["max_kv_tokens"])
pulumi.export("fits", estimate["fits"])
