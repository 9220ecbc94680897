#!/usr/bin/env bash
# Build llama-cpp-python once (a from-source CMake build, ~5-8 min on 2 cores) and install it with its
# [server] extra into the given Python. The wheel is cached, so later runs only install.
#
# Usage: .ci/llama-cpp.sh /path/to/python
#   GPUSTACK_WHEEL_CACHE  where the built wheel is kept (default: ~/.cache/gpustack-pulumi/wheels)
set -euo pipefail

# The version the runtime's llama.cpp tests are written against (its server CLI flags and OpenAI routes).
LLAMA_CPP_PYTHON_VERSION="0.3.36"

python_bin="${1:?usage: $0 /path/to/python}"
cache_dir="${GPUSTACK_WHEEL_CACHE:-$HOME/.cache/gpustack-pulumi/wheels}"
mkdir -p "$cache_dir"

wheel_glob="$cache_dir/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}-*.whl"
# shellcheck disable=SC2086  # the glob must expand
if ! ls $wheel_glob >/dev/null 2>&1; then
    echo "building llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} into $cache_dir (slow: CMake build of llama.cpp)"
    # GGML_NATIVE=OFF: a portable CPU build, so a cached wheel also runs on a CI machine with another CPU.
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
        "$python_bin" -m pip wheel --no-deps -w "$cache_dir" "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
fi

# shellcheck disable=SC2086
wheel_path="$(ls $wheel_glob | head -n 1)"
# Install that exact file (a plain requirement could pick the sdist from the index and build again).
# The [server] extra pulls uvicorn, fastapi, sse-starlette, pydantic-settings and starlette-context.
"$python_bin" -m pip install "llama-cpp-python[server] @ file://${wheel_path}"
"$python_bin" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
echo "installed from $wheel_path"
