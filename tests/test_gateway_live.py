"""A real gateway (LiteLLM proxy, started from the agent's instance body) in front of real llama.cpp replicas of the
tiny model, loopback only: routing by model name, keys (401/403/429, expiry, budget), failover with zero failed
requests when a replica is killed mid-run, config pushed under load without a failure, and usage equal to the
tokens the engines reported (in the usage report and in the Prometheus metrics)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gateway_fixtures import gateway_process, llama_replica

from gpustack_pulumi.components.gateway import default_gateway_python
from gpustack_pulumi.gateway.client import push_config, read_usage
from gpustack_pulumi.gateway.config import KeyRecord, RouterSettings, key_sha256, render_gateway_config, routes_for
from gpustack_pulumi.tinymodel import write_tiny_gguf

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed in this environment")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(default_gateway_python()).exists(),
        reason="the gateway's virtualenv is missing: run scripts/setup.sh (it installs .cache/gateway-venv)",
    ),
]

MASTER = "test-master-key-0123456789"
KEYS = {name: f"sk-gps-test-{name}" for name in ("open", "scoped", "rpm", "tpm", "expiring", "budget", "load")}


def _records(now: float) -> list[KeyRecord]:
    def record(name: str, **limits) -> KeyRecord:
        return KeyRecord(alias=name, key_sha256=key_sha256(KEYS[name]), **limits)

    return [
        record("open"),
        record("scoped", models=["beta"]),
        record("rpm", rpm=3),
        record("tpm", tpm=40),
        record("expiring", expires_at=now + 6),
        record("budget", token_budget=30),
        record("load"),
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Two replicas: 'alpha' on A, 'beta' on B, and 'chat' on both."""
    work = tmp_path_factory.mktemp("gateway")
    model = write_tiny_gguf(work / "tiny.gguf")
    with llama_replica(model, "tiny", work) as (a, _), llama_replica(model, "tiny", work) as (b, _):
        routes = [
            *routes_for("alpha", "tiny", "alpha", [a]),
            *routes_for("beta", "tiny", "beta", [b]),
            *routes_for("chat", "tiny", "chat", [a, b]),
        ]
        config = render_gateway_config(routes, _records(time.time()), RouterSettings(), time.time())
        with gateway_process(work / "gw-state", MASTER, config) as base:
            yield {"base": base, "a": a, "b": b, "model": model, "work": work, "routes": routes}


def _chat(base: str, key: str | None, model: str, max_tokens: int = 4, prompt: str = "hello") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_routes_by_model_name(cluster) -> None:
    base, key = cluster["base"], KEYS["open"]
    for model, replica in (("alpha", "alpha-r0"), ("beta", "beta-r0"), ("alpha", "alpha-r0")):
        reply = _chat(base, key, model)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-litellm-model-id"] == replica
    completion = httpx.post(
        f"{base}/v1/completions", json={"model": "beta", "prompt": "hi", "max_tokens": 3},
        headers={"Authorization": f"Bearer {key}"}, timeout=60,
    )  # fmt: skip
    assert completion.status_code == 200 and completion.headers["x-litellm-model-id"] == "beta-r0"
    listed = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert sorted(m["id"] for m in listed["data"]) == ["alpha", "beta", "chat"]
    assert _chat(base, key, "no-such-model").status_code in (400, 404)


def test_keys_are_enforced(cluster) -> None:
    base = cluster["base"]
    assert _chat(base, None, "alpha").status_code == 401
    assert _chat(base, "sk-gps-unknown", "alpha").status_code == 401
    assert _chat(base, KEYS["scoped"], "alpha").status_code == 403
    assert _chat(base, KEYS["scoped"], "beta").status_code == 200
    scoped_models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {KEYS['scoped']}"}).json()
    assert [m["id"] for m in scoped_models["data"]] == ["beta"]

    rpm = [_chat(base, KEYS["rpm"], "alpha", max_tokens=1).status_code for _ in range(5)]
    assert rpm[:3] == [200, 200, 200] and rpm[3:] == [429, 429]

    tpm = [_chat(base, KEYS["tpm"], "alpha", max_tokens=16).status_code for _ in range(4)]
    assert tpm[0] == 200 and 429 in tpm  # the first request's tokens fill most of the minute's 40

    budget = [_chat(base, KEYS["budget"], "alpha", max_tokens=8).status_code for _ in range(4)]
    assert budget[0] == 200 and budget[-1] == 429  # 30 tokens in all: refused once they are used

    # Expiry: the key gets 3 s from now (a config push, as at an up), works, then is refused without an up.
    now = time.time()
    records = [r if r.alias != "expiring" else r.model_copy(update={"expires_at": now + 3}) for r in _records(now)]
    push_config(base, MASTER, render_gateway_config(cluster["routes"], records, RouterSettings(), now))
    assert _chat(base, KEYS["expiring"], "alpha").status_code == 200
    deadline = time.monotonic() + 15
    status = 200
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _chat(base, KEYS["expiring"], "alpha").status_code
    assert status == 401


def test_failover_when_a_replica_is_killed_mid_run(cluster) -> None:
    """A third replica joins 'chat' (config pushed under load), then is killed mid-run: no request fails."""
    base, work = cluster["base"], cluster["work"]
    key = {"Authorization": f"Bearer {KEYS['load']}"}
    with llama_replica(cluster["model"], "tiny", work) as (c, process_c):
        routes = [r for r in cluster["routes"] if r.model != "chat"]
        routes += routes_for("chat", "tiny", "chat", [cluster["a"], c])
        settings = RouterSettings(num_retries=3, allowed_fails=0, cooldown_time=30)
        config = render_gateway_config(routes, _records(time.time()), settings, time.time())

        def call(index: int) -> tuple[int, str]:
            body = {"model": "chat", "prompt": f"request {index}", "max_tokens": 4}
            reply = httpx.post(f"{base}/v1/completions", json=body, headers=key, timeout=60)
            return reply.status_code, reply.headers.get("x-litellm-model-id", "")

        with ThreadPoolExecutor(max_workers=4) as pool:
            first = list(pool.map(call, range(8)))  # traffic while the config changes below
            push_config(base, MASTER, config)
            second = list(pool.map(call, range(8, 24)))
            futures = [pool.submit(call, i) for i in range(24, 64)]
            time.sleep(0.3)
            process_c.kill()  # mid-run
            third = [f.result() for f in futures]
    results = first + second + third
    assert [s for s, _ in results if s != 200] == []
    assert {"chat-r1"} & {replica for _, replica in second + third}  # the new replica took traffic before its death
    # The config of the other tests comes back (chat on A and B).
    push_config(base, MASTER, render_gateway_config(cluster["routes"], _records(time.time()), RouterSettings(), 0))


def test_usage_equals_the_tokens_the_engines_reported(cluster) -> None:
    base, key = cluster["base"], KEYS["open"]
    before = read_usage(base, MASTER)["keys"].get("open", {})
    reported = {"alpha": [0, 0], "beta": [0, 0]}
    for index in range(6):
        model = ("alpha", "beta")[index % 2]
        reply = _chat(base, key, model, max_tokens=3 + index, prompt=f"count {index}")
        assert reply.status_code == 200
        usage = reply.json()["usage"]
        reported[model][0] += usage["prompt_tokens"]
        reported[model][1] += usage["completion_tokens"]
    time.sleep(0.5)  # the usage callback runs after the response
    after = read_usage(base, MASTER)["keys"]["open"]
    for model, (prompt, completion) in reported.items():
        old = before.get(model, {"prompt_tokens": 0, "completion_tokens": 0})
        assert after[model]["prompt_tokens"] - old["prompt_tokens"] == prompt
        assert after[model]["completion_tokens"] - old["completion_tokens"] == completion
    metrics = httpx.get(f"{base}/metrics/", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10).text
    for name, index in (("input", 0), ("output", 1)):
        total = 0.0
        for line in metrics.splitlines():
            if line.startswith(f"litellm_{name}_tokens_metric_total{{") and 'api_key_alias="open"' in line:
                total += float(line.rsplit(" ", 1)[1])
        expected = sum(after[m]["prompt_tokens" if index == 0 else "completion_tokens"] for m in after)
        assert total == expected, (name, total, expected)
    assert re.search(r"^litellm_request_total_latency_metric_bucket\{", metrics, re.M)
    assert KEYS["open"] not in metrics


def test_usage_cli(cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from gpustack_pulumi.gateway.__main__ import main

    monkeypatch.setenv("GPUSTACK_GATEWAY_MASTER_KEY", MASTER)
    assert main(["usage", f"{cluster['base']}/v1"]) == 0
    out = capsys.readouterr().out
    assert "open" in out and "alpha" in out
    monkeypatch.delenv("GPUSTACK_GATEWAY_MASTER_KEY")
    assert main(["usage", cluster["base"]]) == 2
