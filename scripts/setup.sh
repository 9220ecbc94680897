#!/usr/bin/env bash
# Set up gpustack-pulumi for development on a fresh Debian/Ubuntu machine: a virtualenv in .venv with the
# package, the node agent (runtime/) and the test tools. Idempotent: a second run only checks.
#
#   bash scripts/setup.sh            # package + agent + dev tools
#   GPUSTACK_SKIP_APT=1 ...          # don't try apt-get (no root, or packages already there)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "gpustack-pulumi needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 2
fi

# System packages: a C compiler (the fake libnvidia-ml.so.1 the tests build), CMake and g++ (llama.cpp, built
# once from source), sshd and iproute2 (test hosts in network namespaces, reached over SSH).
if [ -z "${GPUSTACK_SKIP_APT:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for tool in gcc g++ cmake make ip /usr/sbin/sshd ssh-keygen; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            gcc g++ cmake make iproute2 openssh-server openssh-client >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e './runtime[agent]' -e '.[dev]'
# The policy pack's pulumi-policy (pyproject's `policy` extra, same pin), without its protobuf ~=5.29 pin, which
# would downgrade the protobuf that ortools needs (it works with protobuf 6).
.venv/bin/python -m pip install -q --no-deps "$(sed -n 's/^policy = \["\(pulumi-policy==[0-9.]*\)"\]$/\1/p' pyproject.toml)"
# llama.cpp (llama-cpp-python[server]): the engine the local stack runs on a machine without a GPU, and the
# real engine of the tests. Built once from source (~5-8 minutes on 2 cores), then installed from a cached wheel.
if [ -z "${GPUSTACK_SKIP_LLAMA:-}" ]; then
    bash .ci/llama-cpp.sh .venv/bin/python >/dev/null
fi
# `pulumi up` starts the dynamic-provider plugin in the stack's own folder, where Pulumi.yaml's `virtualenv: .venv`
# is looked up: point each stack folder at this venv.
for stack_dir in stacks/*/; do
    ln -sfn ../../.venv "${stack_dir}.venv"
done
echo "setup done: $(.venv/bin/gpustack-pulumi --version)"

# The gateway's own virtualenv (LiteLLM proxy, open-source features): every package pinned with its hash, kept
# apart from .venv because LiteLLM pins ~120 packages of its own. Components find it at .cache/gateway-venv
# (or $GPUSTACK_GATEWAY_PYTHON). ~40 s the first time; a second run only checks.
if [ -z "${GPUSTACK_SKIP_GATEWAY:-}" ]; then
    if ! .cache/gateway-venv/bin/python -c 'import litellm.proxy.proxy_cli' 2>/dev/null; then
        "$PYTHON" -m venv .cache/gateway-venv
        .cache/gateway-venv/bin/python -m pip install -q --require-hashes --no-deps \
            -r gpustack_pulumi/gateway/requirements-litellm.txt
    fi
fi
