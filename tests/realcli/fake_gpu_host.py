"""A machine that looks like it has NVIDIA GPUs to the `local` stack's *preview*: the stack asks NVML whether a GPU
is there (``ctypes.CDLL("libnvidia-ml.so.1")``: init, device count) and reads the devices with ``nvidia-smi``
(gpustack_pulumi.localhost). Both are stood in for here: a three-function NVML library compiled with gcc, and an
``nvidia-smi`` script printing the CSV rows the stack parses. Enough for `pulumi preview` (planned capacity,
placement, policies); nothing here can start an engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_NVML_STUB = """
int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = %d; return 0; }
"""


def fake_gpu_env(directory: Path, products: list[tuple[str, int]]) -> dict[str, str]:
    """Environment entries (LD_LIBRARY_PATH, and a PATH prefix under the key ``PATH_PREFIX``) for a machine with
    these GPUs, as (driver product name, memory in MiB)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler: install gcc to build the NVML stub")
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "nvml_stub.c"
    source.write_text(_NVML_STUB % len(products))
    library = directory / "lib" / "libnvidia-ml.so.1"
    library.parent.mkdir(exist_ok=True)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True, capture_output=True)
    rows = "\n".join(
        f"{index}, GPU-00000000-0000-0000-0000-{index:012d}, {name}, {mib}, 0, 8.9"
        for index, (name, mib) in enumerate(products)
    )
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'ROWS'\n{rows}\nROWS\n")
    smi.chmod(0o755)
    return {"LD_LIBRARY_PATH": str(library.parent), "PATH_PREFIX": str(bin_dir)}
