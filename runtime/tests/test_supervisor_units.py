"""Pure parts of the supervisor: backoff, command lines, environments, ids, persisted state, log tails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpustack_runtime.supervisor import (
    BackoffPolicy,
    container_name,
    container_run_argv,
    process_environment,
    validate_instance_id,
)
from gpustack_runtime.supervisor.launch import container_flavor, engine_argv
from gpustack_runtime.supervisor.logfiles import log_generations, prune_logs, read_tail
from gpustack_runtime.supervisor.state import PersistedInstance, SupervisorState, load_state, save_state
from gpustack_runtime.wire import InstanceBody, LaunchBody


def test_backoff_doubles_from_base_and_caps_at_max() -> None:
    policy = BackoffPolicy()
    assert [policy.delay(n) for n in range(1, 8)] == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert policy.max_consecutive_failures == 5
    assert BackoffPolicy(base_seconds=0.5, max_seconds=1.5).delay(3) == 1.5
    assert policy.delay(10_000) == 300.0  # no float overflow after a long crash history


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"base_seconds": -1.0}, "base_seconds"),
        ({"base_seconds": 10.0, "max_seconds": 5.0}, "max_seconds"),
        ({"max_consecutive_failures": 0}, "max_consecutive_failures"),
    ],
)
def test_backoff_rejects_nonsense_with_the_field_name(arguments: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BackoffPolicy(**arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="consecutive_failures"):
        BackoffPolicy().delay(0)


@pytest.mark.parametrize("good", ["a", "qwen3-8b.r0", "A_b-C.9", "x" * 128])
def test_instance_ids_of_safe_characters_are_accepted(good: str) -> None:
    assert validate_instance_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 129, "a/b", "../etc", "a b", "é", "a:b"])
def test_instance_ids_that_could_escape_a_path_or_name_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="A-Z, a-z, 0-9"):
        validate_instance_id(bad)


def test_port_placeholder_is_replaced_everywhere_and_other_braces_survive() -> None:
    argv = ["serve", "--port", "{port}", "--url=http://h:{port}/v1", '{"json": {"port": 1}}']
    assert engine_argv(argv, 40007) == [
        "serve",
        "--port",
        "40007",
        "--url=http://h:40007/v1",
        '{"json": {"port": 1}}',
    ]


def test_process_environment_filters_agent_secrets_and_pins_devices() -> None:
    agent_env = {
        "PATH": "/usr/bin",
        "HF_TOKEN": "hf-secret",  # engines need it: kept
        "GPUSTACK_RUNTIME_TOKEN": "agent-bearer",  # the agent's own: dropped
        "GPUSTACK_AGENT_DEBUG": "1",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",  # the agent's view, not the instance's
    }
    body_env = {"SERVED_URL": "http://127.0.0.1:{port}", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    environment = process_environment(agent_env, body_env, [2, 3], 40001)
    assert environment["PATH"] == "/usr/bin"
    assert environment["HF_TOKEN"] == "hf-secret"
    assert "GPUSTACK_RUNTIME_TOKEN" not in environment
    assert "GPUSTACK_AGENT_DEBUG" not in environment
    assert environment["SERVED_URL"] == "http://127.0.0.1:40001"
    # A body cannot widen its devices past its claim.
    assert environment["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert environment["ASCEND_RT_VISIBLE_DEVICES"] == "2,3"
    cpu_only = process_environment(agent_env, {}, [], 40001)
    assert cpu_only["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu_only["ASCEND_RT_VISIBLE_DEVICES"] == ""


def test_docker_run_argv_with_gpus_published_port_and_env_names_only() -> None:
    argv = container_run_argv(
        "/usr/bin/docker",
        "qwen3-8b.r0",
        "vllm/vllm-openai:v0.11.0",
        ["vllm", "serve", "Qwen/Qwen3-8B", "--port", "40001"],
        env_names=["HF_TOKEN", "VLLM_LOGGING_LEVEL"],
        device_indices=[0, 1],
        port=40001,
        detach=True,
    )
    assert argv == [
        "/usr/bin/docker",
        "run",
        "--name",
        "gpustack-qwen3-8b.r0",
        "-d",
        "--ipc",
        "host",
        "--gpus",
        '"device=0,1"',
        "-p",
        "40001:40001",
        "-e",
        "HF_TOKEN",
        "-e",
        "VLLM_LOGGING_LEVEL",
        "--entrypoint",
        "vllm",
        "vllm/vllm-openai:v0.11.0",
        "serve",
        "Qwen/Qwen3-8B",
        "--port",
        "40001",
    ]


def test_podman_run_argv_uses_cdi_devices_and_host_network_in_the_foreground() -> None:
    argv = container_run_argv(
        "podman",
        "r1",
        "docker.io/library/engine:1",
        ["serve"],
        device_indices=[2, 5],
        port=40002,
        network_host=True,
    )
    assert argv == [
        "podman",
        "run",
        "--name",
        "gpustack-r1",
        "--ipc",
        "host",
        "--device",
        "nvidia.com/gpu=2",
        "--device",
        "nvidia.com/gpu=5",
        "--network",
        "host",
        "--entrypoint",
        "serve",
        "docker.io/library/engine:1",
    ]


def test_cpu_only_container_has_no_gpu_flags() -> None:
    argv = container_run_argv("docker", "cpu", "img", ["run"], port=40003)
    assert "--gpus" not in argv and "--device" not in argv
    assert argv[argv.index("-p") + 1] == "40003:40003"


def test_container_cli_must_be_docker_or_podman() -> None:
    assert container_flavor("/opt/bin/podman-remote") == "podman"
    assert container_name("a.b") == "gpustack-a.b"
    with pytest.raises(ValueError, match="container_cli"):
        container_flavor("/usr/bin/nerdctl")


def _body() -> InstanceBody:
    return InstanceBody(owner="s/d", launch=LaunchBody(argv=["engine"]), device_indices=[0])


def test_state_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    assert load_state(path) == SupervisorState()
    state = SupervisorState(
        instances=[PersistedInstance(id="a", body=_body(), port=40000, state="ready", pid=7, pid_start_time=9)]
    )
    save_state(path, state)
    assert load_state(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["instances.json"]  # no temporary left behind
    assert json.loads(path.read_text())["instances"][0]["pid_start_time"] == 9


def test_corrupt_state_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text('{"version": 1, "instances": [{"id": 3}]}')
    with pytest.raises(ValueError, match=r"instances\.json is not a valid supervisor state file"):
        load_state(path)


def test_log_tail_reads_last_lines_and_the_offset_they_end_at(tmp_path: Path) -> None:
    path = tmp_path / "a.0.log"
    lines = [f"line {n} " + "x" * 200 for n in range(2000)]  # > one 64 KiB block
    path.write_text("\n".join(lines) + "\npartial")
    tail, offset = read_tail(path, 3)
    assert tail == [lines[-2], lines[-1], "partial"]
    assert offset == path.stat().st_size
    assert read_tail(path, 0) == ([], offset)
    assert read_tail(path, None)[0] == [*lines, "partial"]
    assert read_tail(tmp_path / "missing.log", 5) == ([], 0)


def test_only_the_current_and_previous_logs_are_kept(tmp_path: Path) -> None:
    for name in ["a.0.log", "a.1.log", "a.2.log", "a.3.log", "a.b.0.log"]:
        (tmp_path / name).write_text("x")
    prune_logs(tmp_path, "a", 3)
    assert sorted(log_generations(tmp_path, "a")) == [2, 3]
    assert (tmp_path / "a.b.0.log").exists()  # another instance whose id starts with "a."
