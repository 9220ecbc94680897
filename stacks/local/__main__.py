"""The `local` stack: this machine as the only node.

It starts the gpustack agent here, places one model on this machine's GPUs (or its CPU) and serves it:
- without a GPU: a tiny GGUF model (generated on first run) served by llama.cpp on the CPU;
- with a GPU: the model and engine the stack config names (default Qwen/Qwen3-0.6B, engine auto).

Config (all optional): gpustack:model, gpustack:engine, gpustack:replicas, gpustack:maxModelLen,
gpustack:concurrency, gpustack:stateDir, gpustack:readyTimeout, gpustack:deleteTimeout.
"""

import sys
from pathlib import Path

import pulumi

from gpustack_pulumi.components import AgentToken, GpuCluster, LocalNodePool, ModelDeployment
from gpustack_pulumi.localhost import has_nvidia_gpu
from gpustack_pulumi.tinymodel import write_tiny_gguf

config = pulumi.Config("gpustack")
state_root = Path(config.get("stateDir") or f".gpustack/{pulumi.get_stack()}").resolve()
model = config.get("model")
if not model:
    if has_nvidia_gpu():
        model = "Qwen/Qwen3-0.6B"
    else:
        tiny = state_root / "models" / "tiny.gguf"
        if not tiny.exists():
            tiny.parent.mkdir(parents=True, exist_ok=True)
            write_tiny_gguf(tiny)
        model = str(tiny)
is_gguf = model.endswith(".gguf")

replicas = config.get_int("replicas")

token = AgentToken("agent-token")
pool = LocalNodePool("local", {"agent_token": token.token, "state_dir": str(state_root / "agent")})
cluster = GpuCluster("local", {"pools": [pool], "agent_token": token.token})
chat = ModelDeployment(
    "chat",
    {
        "cluster": cluster,
        "model": model,
        "replicas": 1 if replicas is None else replicas,  # 0 is a valid answer: nothing served, agent kept
        "engine": config.get("engine") or "auto",
        "max_model_len": config.get_int("maxModelLen") or (512 if is_gguf else 8192),
        "concurrency": config.get_int("concurrency") or 1,
        # Engines run as processes of this machine, with this environment's Python (llama-cpp-python, SGLang).
        "engine_options": {"container": False, "python": sys.executable, "host": "127.0.0.1"},
        "ready_timeout_s": config.get_int("readyTimeout") or 900,
        "delete_timeout_s": config.get_int("deleteTimeout") or 120,
    },
)
pulumi.export("agents", cluster.endpoints)
pulumi.export("endpoints", chat.endpoints)
pulumi.export("placements", chat.placements)

# One OpenAI-compatible endpoint for the cluster (LiteLLM proxy, run by the agent) and a key to call it with
# (gpustack:gateway false leaves them out; gpustack:keyRpm sets the key's requests per minute).
from gpustack_pulumi.components import ApiKey, Gateway  # noqa: E402

if config.get_bool("gateway") is not False:
    key = ApiKey("default-key", {"models": ["chat"], "rpm": config.get_int("keyRpm") or 600})
    gateway = Gateway("gateway", {"cluster": cluster, "models": {"chat": chat}, "keys": [key],
                                  "state_dir": str(state_root / "gateway")})  # fmt: skip
    pulumi.export("endpoint", gateway.endpoint)
    pulumi.export("api_key", key.key)
    pulumi.export("gateway_master_key", gateway.master_key)
    pulumi.export("usage", gateway.usage)
