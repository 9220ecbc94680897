"""The gateway process's own glue around LiteLLM's proxy. This file runs on the gateway's node, inside the
gateway's virtualenv (LiteLLM and its dependencies, not gpustack_pulumi): it imports only the standard library,
and LiteLLM/FastAPI inside the functions LiteLLM calls.

The agent starts it like an engine: ``python -c BOOTSTRAP STATE_DIR HOST PORT`` with this file's source in an
environment variable (see ``gpustack_pulumi.gateway.launch``). :func:`main` writes LiteLLM's config from the
last config pushed (kept in ``STATE_DIR/config.json``) and replaces itself with the proxy (same pid, so the
agent supervises the proxy). LiteLLM then loads this file again, as its ``custom_auth`` module, which:

- authenticates each request against the key table (SHA-256 of each key, never a key): unknown or missing key
  401, expired key 401, token budget used up 429; the key's model scope and its rpm/tpm limits are enforced by
  LiteLLM from the returned ``UserAPIKeyAuth`` (403, 429);
- adds ``PUT /gpustack/config`` (master key): a new model list, router settings and key table, applied in place
  (``Router.set_model_list``): requests in flight finish on the replica they started on;
- adds ``GET /gpustack/usage`` (master key): tokens in/out and requests per key and model, counted from the
  usage the engines reported, kept in ``STATE_DIR/usage.json`` so budgets survive a restart.

Prometheus metrics are LiteLLM's own (``/metrics``): tokens per key alias and model, latency, failures.
"""

import hashlib
import hmac
import json
import os
import sys
import threading
import time
from pathlib import Path

STATE_DIR_ENV = "GPUSTACK_GATEWAY_STATE_DIR"
MASTER_KEY_ENV = "GPUSTACK_GATEWAY_MASTER_KEY"
BASE_CONFIG_ENV = "GPUSTACK_GATEWAY_BASE_CONFIG"
MODULE_NAME = "gpustack_gateway_glue"
CONFIG_FILE = "config.json"
USAGE_FILE = "usage.json"
USAGE_FLUSH_S = 1.0
_SHARED = "_gpustack_gateway_state"  # attribute on the litellm module: one state however often this file loads


# ----- launcher (before LiteLLM) ------------------------------------------------------------------------------
def main(argv: list[str], source: str) -> None:
    """``STATE_DIR HOST PORT``: write this module where LiteLLM loads ``custom_auth`` from (next to its config),
    render LiteLLM's config and exec the proxy."""
    state_dir, host, port = Path(argv[0]), argv[1], argv[2]
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(state_dir / f"{MODULE_NAME}.py", source)
    base = json.loads(os.environ.pop(BASE_CONFIG_ENV))
    pushed = _read_json(state_dir / CONFIG_FILE) or {}
    base["model_list"] = pushed.get("model_list") or []
    if pushed.get("router_settings"):
        base["router_settings"] = pushed["router_settings"]
    _write_private(state_dir / "litellm.yaml", json.dumps(base, indent=1))  # JSON is YAML
    os.environ[STATE_DIR_ENV] = str(state_dir)
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no download of the cost map: the gateway runs offline
    os.environ.setdefault("LITELLM_LOG", "WARNING")
    argv_proxy = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(state_dir / "litellm.yaml"),
                  "--host", host, "--port", port, "--num_workers", "1"]  # fmt: skip
    sys.stdout.flush()
    os.execv(sys.executable, argv_proxy)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Atomic write, mode 0600."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


# ----- inside the proxy ------------------------------------------------------------------------------------
class _State:
    """Key table and usage of this gateway process."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.lock = threading.Lock()
        self.keys: dict[str, dict] = {}
        usage = _read_json(state_dir / USAGE_FILE) or {}
        self.usage: dict[str, dict[str, dict[str, int]]] = usage.get("keys", {})
        self.aliases: dict[str, str] = usage.get("aliases", {})
        self.dirty = False
        pushed = _read_json(state_dir / CONFIG_FILE) or {}
        self.set_keys(pushed.get("keys") or [])
        threading.Thread(target=self._flush_loop, name="gpustack-usage-flush", daemon=True).start()

    def set_keys(self, keys: list[dict]) -> None:
        with self.lock:
            self.keys = {k["key_sha256"]: k for k in keys}
            self.aliases.update({k["key_sha256"]: k["alias"] for k in keys})

    def tokens_used(self, key_hash: str) -> int:
        with self.lock:
            per_model = self.usage.get(key_hash, {})
            return sum(m["prompt_tokens"] + m["completion_tokens"] for m in per_model.values())

    def record(self, key_hash: str, model: str, prompt: int, completion: int, failed: bool) -> None:
        with self.lock:
            entry = self.usage.setdefault(key_hash, {}).setdefault(
                model, {"requests": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            entry["requests"] += 1
            entry["failures"] += int(failed)
            entry["prompt_tokens"] += prompt
            entry["completion_tokens"] += completion
            self.dirty = True

    def report(self) -> dict:
        with self.lock:
            return {
                "keys": {
                    self.aliases.get(key_hash, key_hash[:12]): {model: dict(v) for model, v in models.items()}
                    for key_hash, models in sorted(self.usage.items())
                }
            }

    def flush(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            text = json.dumps({"keys": self.usage, "aliases": self.aliases})
            self.dirty = False
        _write_private(self.state_dir / USAGE_FILE, text)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(USAGE_FLUSH_S)
            try:
                self.flush()
            except OSError as error:  # a full disk must not stop serving
                print(f"gpustack gateway: cannot write usage: {error}", file=sys.stderr)


def _state() -> _State:
    import litellm

    state = getattr(litellm, _SHARED, None)
    if state is None:
        state = _State(Path(os.environ[STATE_DIR_ENV]))
        setattr(litellm, _SHARED, state)
        _install(state)
    return state


def _is_master(api_key: str | None) -> bool:
    master = os.environ.get(MASTER_KEY_ENV, "")
    return bool(master) and api_key is not None and hmac.compare_digest(api_key.encode(), master.encode())


def _bearer(request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _install(state: _State) -> None:
    """Register the usage callback and the admin routes on LiteLLM's app (once per process)."""
    import litellm
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.proxy import proxy_server

    class UsageCounter(CustomLogger):
        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._count(kwargs, failed=False)

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
            self._count(kwargs, failed=True)

        @staticmethod
        def _count(kwargs, failed: bool) -> None:
            payload = kwargs.get("standard_logging_object") or {}
            metadata = payload.get("metadata") or {}
            key_hash = metadata.get("user_api_key_hash")
            if not key_hash or key_hash not in state.aliases:
                return
            model = payload.get("model_group") or payload.get("model") or "unknown"
            state.record(key_hash, model, int(payload.get("prompt_tokens") or 0),
                         int(payload.get("completion_tokens") or 0), failed)  # fmt: skip

    litellm.callbacks.append(UsageCounter())

    async def put_config(request: Request):
        if not _is_master(_bearer(request)):
            return JSONResponse({"error": "the gateway's master key is required"}, status_code=401)
        try:
            config = await request.json()
            model_list, keys = list(config["model_list"]), list(config["keys"])
            settings = dict(config.get("router_settings") or {})
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"error": f"bad config: {error}"}, status_code=400)
        _write_private(state.state_dir / CONFIG_FILE, json.dumps(config))
        router = proxy_server.llm_router
        if router is None:
            from litellm.types.router import RouterGeneralSettings

            router = litellm.Router(
                model_list=model_list, router_general_settings=RouterGeneralSettings(async_only_mode=True), **settings
            )
            proxy_server.llm_router = router
        else:
            router.set_model_list(model_list)
            router.update_settings(**{k: v for k, v in settings.items() if k != "routing_strategy"})
        proxy_server.llm_model_list = model_list
        state.set_keys(keys)
        models = sorted({entry["model_name"] for entry in model_list})
        return JSONResponse({"models": models, "replicas": len(model_list), "keys": len(keys)})

    async def get_usage(request: Request):
        if not _is_master(_bearer(request)):
            return JSONResponse({"error": "the gateway's master key is required"}, status_code=401)
        return JSONResponse(state.report())

    app = proxy_server.app
    app.add_api_route("/gpustack/config", put_config, methods=["PUT"], include_in_schema=False)
    app.add_api_route("/gpustack/usage", get_usage, methods=["GET"], include_in_schema=False)
    # Ahead of LiteLLM's own routes, so no catch-all of theirs shadows ours.
    ours = app.router.routes[-2:]
    del app.router.routes[-2:]
    app.router.routes[0:0] = ours


async def user_api_key_auth(request, api_key: str):
    """LiteLLM's ``custom_auth`` hook: the key table decides who may call; LiteLLM enforces scope and limits."""
    from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth

    state = _state()
    if _is_master(api_key):
        return UserAPIKeyAuth(api_key=api_key, user_role=LitellmUserRoles.PROXY_ADMIN, key_alias="gateway-admin")
    if not api_key:
        raise ProxyException("an API key is required: send it as a bearer token", "auth_error", "api_key", 401)
    key_hash = hashlib.sha256(api_key.encode("utf-8")).hexdigest()
    with state.lock:
        record = state.keys.get(key_hash)
    if record is None:
        raise ProxyException("invalid API key", "auth_error", "api_key", 401)
    expires_at = record.get("expires_at")
    if expires_at is not None and time.time() >= float(expires_at):
        raise ProxyException(f"API key '{record['alias']}' has expired", "expired_key", "api_key", 401)
    budget = record.get("token_budget")
    if budget is not None and state.tokens_used(key_hash) >= int(budget):
        raise ProxyException(
            f"API key '{record['alias']}' has used its token budget ({budget} tokens)", "budget_exceeded", None, 429
        )
    return UserAPIKeyAuth(
        api_key=key_hash,
        token=key_hash,
        key_alias=record["alias"],
        models=list(record.get("models") or []),
        rpm_limit=record.get("rpm"),
        tpm_limit=record.get("tpm"),
        user_role=LitellmUserRoles.INTERNAL_USER,
    )


# Loaded by LiteLLM as its custom_auth module: register the routes and the usage counter at startup, not at the
# first request.
if os.environ.get(STATE_DIR_ENV) and "litellm.proxy.proxy_server" in sys.modules:
    _state()
