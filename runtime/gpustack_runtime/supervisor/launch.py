"""Turning a :class:`~gpustack_runtime.wire.LaunchBody` into a command line and an environment (pure).

Two backends share one supervision path: a plain process, and a container run through the docker/podman CLI in
the foreground (so the CLI process stands for the container: its exit is the container's exit, its output is
the container's output, and a SIGTERM to it is forwarded to the container by the CLI's signal proxy).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Literal

PORT_PLACEHOLDER = "{port}"
"""Replaced by the assigned port in argv and env values (``LaunchBody`` docs). Plain text replacement, not
``str.format``, so other braces (JSON arguments) pass through untouched."""

INSTANCE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""Instance ids become file names (logs) and container names, so they are restricted to characters that are
safe in both."""

DEVICE_VISIBILITY_ENV_VARS = ("CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
"""Each vendor's runtime hides every device not listed (CUDA, Ascend CANN, ROCm HIP). An empty value hides all
of them, which is what a CPU-only engine should see."""

AGENT_PRIVATE_ENV_PREFIXES = ("GPUSTACK_RUNTIME_", "GPUSTACK_AGENT_")
"""The agent's own settings (its bearer token among them) stay out of the engines' environment."""

CONTAINER_NAME_PREFIX = "gpustack-"

ContainerFlavor = Literal["docker", "podman"]


def validate_instance_id(instance_id: str) -> str:
    """Return ``instance_id`` or raise ValueError saying which characters are allowed."""
    if not isinstance(instance_id, str) or not INSTANCE_ID_PATTERN.fullmatch(instance_id):
        raise ValueError(
            f"instance id {instance_id!r} is invalid: use 1-128 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
        )
    return instance_id


def substitute_port(text: str, port: int) -> str:
    return text.replace(PORT_PLACEHOLDER, str(port))


def engine_argv(argv: Sequence[str], port: int) -> list[str]:
    return [substitute_port(argument, port) for argument in argv]


def body_environment(body_env: Mapping[str, str], port: int) -> dict[str, str]:
    return {name: substitute_port(value, port) for name, value in body_env.items()}


def inherited_environment(agent_env: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without its private settings and without device visibility it may have."""
    return {
        name: value
        for name, value in agent_env.items()
        if not name.startswith(AGENT_PRIVATE_ENV_PREFIXES) and name not in DEVICE_VISIBILITY_ENV_VARS
    }


def process_environment(
    agent_env: Mapping[str, str], body_env: Mapping[str, str], device_indices: Sequence[int], port: int
) -> dict[str, str]:
    """Environment of an engine process: the agent's (filtered), then the body's, then device visibility.

    Device visibility comes last so a body cannot widen its devices past what it claimed.
    """
    environment = inherited_environment(agent_env)
    environment.update(body_environment(body_env, port))
    visible = ",".join(str(index) for index in device_indices)
    for name in DEVICE_VISIBILITY_ENV_VARS:
        environment[name] = visible
    return environment


def container_name(instance_id: str) -> str:
    return CONTAINER_NAME_PREFIX + validate_instance_id(instance_id)


def container_flavor(cli: str) -> ContainerFlavor:
    """docker or podman, from the CLI's file name (``/usr/bin/podman`` -> podman)."""
    name = os.path.basename(cli)
    if name.startswith("podman"):
        return "podman"
    if name.startswith("docker"):
        return "docker"
    raise ValueError(f"container CLI {cli!r} is neither docker nor podman; set container_cli to one of them")


def find_container_cli() -> str | None:
    """The first of docker, podman on PATH."""
    for candidate in ("docker", "podman"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def container_run_argv(
    cli: str,
    instance_id: str,
    image: str,
    argv: Sequence[str],
    *,
    env_names: Sequence[str] = (),
    device_indices: Sequence[int] = (),
    port: int | None = None,
    network_host: bool = False,
    detach: bool = False,
) -> list[str]:
    """The ``docker run``/``podman run`` command line of an instance.

    - The container is named ``gpustack-{id}`` and kept after exit (no ``--rm``) so ``logs`` still works on a
      crashed one; the supervisor removes the old one (``rm -f``) before each start.
    - GPUs: docker's ``--gpus '"device=0,1"'`` (the inner quotes are part of the value: docker parses it as
      CSV, and without them the comma would split it); podman's CDI devices ``--device nvidia.com/gpu=N``.
      Inside the container the devices are renumbered from 0, so no ``CUDA_VISIBLE_DEVICES`` is passed.
    - ``-e NAME`` without a value: docker and podman take the value from their own environment, so secrets
      (API keys, tokens) never appear on a command line that every local user can read in ``ps``.
    - ``--ipc host``: tensor-parallel engines exchange tensors through shared memory (NCCL), and the
      container default of 64 MiB ``/dev/shm`` is too small (vLLM's docker docs).
    - ``detach``: ``-d`` for running by hand; the supervisor runs the CLI in the foreground.
    - ``--entrypoint argv[0]``: engine images (``vllm/vllm-openai``, the llama.cpp server images) set their own
      entrypoint, so the argv's program replaces it instead of being passed to it as an argument.
    """
    flavor = container_flavor(cli)
    command = [cli, "run", "--name", container_name(instance_id)]
    if detach:
        command.append("-d")
    command += ["--ipc", "host"]
    if device_indices:
        if flavor == "docker":
            command += ["--gpus", '"device=' + ",".join(str(index) for index in device_indices) + '"']
        else:
            for index in device_indices:
                command += ["--device", f"nvidia.com/gpu={index}"]
    if network_host:
        command += ["--network", "host"]
    elif port:
        command += ["-p", f"{port}:{port}"]
    for name in env_names:
        command += ["-e", name]
    program, *arguments = argv
    command += ["--entrypoint", program, image, *arguments]
    return command


def container_remove_argv(cli: str, instance_id: str) -> list[str]:
    """Remove the instance's container, running or not (docker exits 1 when there is none: ignored)."""
    return [cli, "rm", "-f", container_name(instance_id)]
