"""Gateway overhead: the same requests to a llama.cpp replica directly and through the gateway. Prints a table.

    .venv/bin/python benchmarks/gateway_bench.py [--requests 200] [--concurrency 4] [--json]

All on loopback: one llama-cpp-python replica of the generated tiny GGUF (one thread) and the gateway (LiteLLM
proxy from .cache/gateway-venv, started from the agent's instance body, one key, routing least-busy). Each
request is ``POST /v1/completions`` with ``max_tokens`` 1; direct and gateway requests alternate (pairs, the
order flipped every pair), so drift on the shared machine hits both sides alike. Reported: p50/p99 latency of
each side, the overhead (gateway − direct) at p50 and p99, the ratio, the gateway's start time and RSS. A
second phase runs ``--concurrency`` clients at once (bounded: ``--requests`` per side in all). Every process it
starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gateway_fixtures import gateway_process, llama_replica

from gpustack_pulumi.gateway.config import KeyRecord, RouterSettings, key_sha256, render_gateway_config, routes_for
from gpustack_pulumi.tinymodel import write_tiny_gguf

MASTER = "bench-master-key-0123456789"
KEY = "sk-gps-bench-key"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="requests per side, sequential phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 5000 or not 1 <= args.concurrency <= 32:
        parser.error("--requests 1..5000, --concurrency 1..32 (the run stays bounded)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_tiny_gguf(work / "tiny.gguf")
        with llama_replica(model, "tiny", work) as (direct, _):
            routes = routes_for("tiny", "tiny", "tiny", [direct])
            keys = [KeyRecord(alias="bench", key_sha256=key_sha256(KEY))]
            config = render_gateway_config(routes, keys, RouterSettings(), time.time())
            started = time.monotonic()
            pids: list[int] = []
            with gateway_process(work / "gw", MASTER, config, pids) as base:
                start_s = time.monotonic() - started
                result = _measure(direct, f"{base}/v1", args.requests, args.concurrency)
                result["gateway_start_s"] = round(start_s, 2)
                result["gateway_rss_mb"] = round(_rss_mb(pids[0]) or 0)
    result["machine"] = f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _measure(direct: str, gateway: str, requests: int, concurrency: int) -> dict:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 1}
    with httpx.Client(timeout=60) as client:

        def call(url: str, auth: bool) -> float:
            t0 = time.perf_counter()
            reply = client.post(f"{url}/completions", json=body, headers=headers if auth else None)
            elapsed = time.perf_counter() - t0
            if reply.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {reply.status_code}: {reply.text[:200]}")
            return elapsed * 1000

        for _ in range(10):  # warm both paths
            call(direct, False)
            call(gateway, True)
        sequential: dict[str, list[float]] = {"direct": [], "gateway": []}
        for index in range(requests):
            order = (("direct", direct, False), ("gateway", gateway, True))
            for side, url, auth in order if index % 2 == 0 else tuple(reversed(order)):
                sequential[side].append(call(url, auth))
        concurrent: dict[str, list[float]] = {}
        for side, url, auth in (("direct", direct, False), ("gateway", gateway, True)):
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                concurrent[side] = list(pool.map(lambda _i, u=url, a=auth: call(u, a), range(requests)))
    out: dict = {"requests_per_side": requests, "concurrency": concurrency}
    for phase, data in (("sequential", sequential), ("concurrent", concurrent)):
        d50, d99 = percentile(data["direct"], 0.5), percentile(data["direct"], 0.99)
        g50, g99 = percentile(data["gateway"], 0.5), percentile(data["gateway"], 0.99)
        out[phase] = {
            "direct_p50_ms": round(d50, 2), "direct_p99_ms": round(d99, 2),
            "gateway_p50_ms": round(g50, 2), "gateway_p99_ms": round(g99, 2),
            "overhead_p50_ms": round(g50 - d50, 2), "overhead_p99_ms": round(g99 - d99, 2),
            "ratio_p50": round(g50 / d50, 2), "mean_direct_ms": round(statistics.fmean(data["direct"]), 2),
        }  # fmt: skip
    return out


def _print(result: dict) -> None:
    print(f"machine: {result['machine']}; {result['requests_per_side']} requests per side")
    print(f"gateway start {result['gateway_start_s']} s, RSS {result['gateway_rss_mb']} MB")
    print(
        f"{'phase':<22} {'direct p50':>10} {'p99':>8} {'gateway p50':>12} {'p99':>8} {'+p50':>7} {'+p99':>7} {'x':>5}"
    )
    for phase in ("sequential", "concurrent"):
        r = result[phase]
        label = phase if phase == "sequential" else f"concurrent ({result['concurrency']})"
        cells = (r["direct_p50_ms"], r["direct_p99_ms"], r["gateway_p50_ms"], r["gateway_p99_ms"])
        print(f"{label:<22} {cells[0]:>10} {cells[1]:>8} {cells[2]:>12} {cells[3]:>8} "
              f"{r['overhead_p50_ms']:>7} {r['overhead_p99_ms']:>7} {r['ratio_p50']:>5}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
