"""Benchmark: `gpustack-pulumi estimate` on every tuned model.

Prints a table: in-process time of one full estimate (analysis + memory model + the smallest fitting fraction)
per model, and the wall time of the CLI process (interpreter start-up and imports included).

    .venv/bin/python benchmarks/estimate_bench.py
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from gpustack_pulumi import catalog
from gpustack_pulumi.estimate import estimate_model

REPEATS = 20


def main() -> None:
    table = Table(title=f"estimate on tuned models ({platform.processor() or platform.machine()}, "
                        f"{platform.python_version()})")
    table.add_column("model")
    table.add_column("GPU / TP")
    table.add_column("in-process median ms", justify="right")
    table.add_column("CLI wall ms", justify="right")
    for model in catalog.tuned_models():
        tp = 8 if model.published.parameters_total > 100e9 else 1
        gpu = "H200" if tp == 8 else "H100-SXM"
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            estimate_model(model.id, gpu=gpu, tp=tp, max_model_len=32768)
            times.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpustack_pulumi.cli", "estimate", model.id, "--gpu", gpu, "--tp",
                        str(tp), "--max-model-len", "32768", "--json"], check=False, capture_output=True)
        wall = (time.perf_counter() - start) * 1000
        table.add_row(model.id, f"{gpu} / {tp}", f"{statistics.median(times):.2f}", f"{wall:.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
