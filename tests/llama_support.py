"""llama.cpp (llama-cpp-python), the real engine of the end-to-end tests: whether it is installed here."""

from __future__ import annotations

import importlib.util

import pytest


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


requires_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python missing: run scripts/setup.sh (it builds it once)"
)
