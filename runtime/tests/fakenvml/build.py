"""Build the fake ``libnvidia-ml.so.1`` (see ``fake_nvml.c`` for its configuration format).

The result is cached by a hash of the source and the compiler flags, so a test session compiles it once
(about 0.2 s) and later sessions reuse it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
"""The soname pynvml opens (``CDLL("libnvidia-ml.so.1")``), so LD_LIBRARY_PATH finds the fake too."""

CONFIG_ENV = "FAKE_NVML_CONFIG"
"""Environment variable naming the JSON machine description; the fake reads it on every nvmlInit."""

_BASE_FLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Wno-format-truncation")


class FakeNvmlBuildError(RuntimeError):
    """gcc is missing or the fake does not compile."""


def build_fake_nvml(out_dir: Path, *, minimal: bool = False) -> Path:
    """Compile the fake NVML into ``out_dir/<hash>/libnvidia-ml.so.1`` and return that path.

    ``minimal=True`` leaves out the optional NVML functions (utilisation, temperature, power, compute
    capability, NVLink, processes), like an old driver: pynvml then raises ``NVMLError_FunctionNotFound``.
    """
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise FakeNvmlBuildError("no C compiler: install gcc (apt-get install gcc) to build the fake NVML")
    flags = (*_BASE_FLAGS, "-DFAKE_NVML_MINIMAL") if minimal else _BASE_FLAGS
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    target_dir = Path(out_dir) / f"fakenvml-{digest}"
    target = target_dir / LIBRARY_NAME
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    # Compile to a private name and rename: concurrent sessions never load a half-written library.
    partial = target_dir / f".{LIBRARY_NAME}.{os.getpid()}"
    result = subprocess.run(
        [compiler, *flags, "-o", str(partial), str(SOURCE)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise FakeNvmlBuildError(f"compiling {SOURCE.name} failed:\n{result.stderr}")
    partial.replace(target)
    return target
