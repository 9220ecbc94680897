"""The ``gpustack-agent`` command: argument errors, token file checks, and the real process serving on a
loopback port until SIGTERM, which leaves its engines running."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_fixtures import TOKEN, engine_body
from gpustack_runtime.cli import build_parser, config_from_args, main

AGENT_COMMAND = Path(sys.executable).with_name("gpustack-agent")
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def running_agent(
    args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """Start the agent process, wait for /healthz, yield it with an authenticated client; always stop it."""
    port = free_port()
    log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [str(AGENT_COMMAND), "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            assert process.poll() is None, f"the agent exited early with {process.returncode}"
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    break
            assert time.monotonic() < deadline, "the agent did not answer /healthz in time"
            time.sleep(0.1)
        yield process, client
    finally:
        client.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log_path is not None:
            log.close()


def test_agent_serves_capacity_and_leaves_engines_running_on_sigterm(tmp_path: Path, token_file: Path) -> None:
    state = tmp_path / "state"
    args = [
        "--token-file",
        str(token_file),
        "--state-dir",
        str(state),
        "--devices",
        "none",
        "--port-range",
        "40650-40699",
        "--labels",
        "zone=a,tier=cpu",
        "--node-name",
        "cli-node",
    ]
    engine_pid: int | None = None
    log_path = tmp_path / "agent.log"
    try:
        with running_agent(args, log_path=log_path) as (process, client):
            assert client.get("/v1/capacity", headers={"Authorization": "Bearer wrong"}).status_code == 401
            document = client.get("/v1/capacity").json()
            assert document["name"] == "cli-node"
            assert document["labels"] == {"zone": "a", "tier": "cpu"}
            assert document["devices"] == []
            assert client.get("/v1/node").json()["backend"] == "none"

            body = engine_body(devices=[], memory=0).model_dump(mode="json")
            assert client.put("/v1/instances/survivor", json=body).status_code == 201
            deadline = time.monotonic() + 15
            while (status := client.get("/v1/instances/survivor").json())["state"] != "ready":
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            engine_pid = status["pid"]

            process.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal after its graceful shutdown, so the exit reads as "killed by
            # SIGTERM", which systemd counts as a clean stop.
            assert process.wait(STOP_TIMEOUT_SECONDS) in (0, -signal.SIGTERM)

        assert engine_pid is not None
        os.kill(engine_pid, 0)  # raises if the engine died with the agent
        assert httpx.get(f"http://127.0.0.1:{status['port']}/v1/models").status_code == 200
        agent_log = log_path.read_text(errors="replace")
        assert "1 engine instance(s) left running" in agent_log, agent_log
        assert TOKEN not in agent_log

        # A new agent adopts the engine; deleting it through the API stops it.
        with running_agent(args) as (_, client):
            adopted = client.get("/v1/instances/survivor").json()
            assert adopted["pid"] == engine_pid
            assert client.delete("/v1/instances/survivor").status_code == 204
            engine_pid = None
    finally:
        if engine_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine_pid, signal.SIGKILL)


def test_agent_reads_gpus_through_nvml(tmp_path: Path, token_file: Path, fake_nvml_library: Path) -> None:
    """The real NVML code path against the fake libnvidia-ml.so.1 (found through LD_LIBRARY_PATH)."""
    library = fake_nvml_library
    machine = tmp_path / "machine.json"
    machine.write_text(
        json.dumps(
            {
                "driver_version": "550.54.15",
                "devices": [
                    {"name": "NVIDIA A10G", "uuid": f"GPU-a10g-{n}", "memory_total": 24 * 1024**3} for n in range(2)
                ],
            }
        )
    )
    env = {**os.environ, "LD_LIBRARY_PATH": str(library.parent), "FAKE_NVML_CONFIG": str(machine)}
    args = ["--token-file", str(token_file), "--state-dir", str(tmp_path / "state"), "--devices", "nvml"]

    with running_agent(args, env=env) as (_, client):
        document = client.get("/v1/capacity").json()
        node = client.get("/v1/node").json()
        reserve = {"owner": "o", "device_indices": [1], "memory_bytes_per_device": 24 * 1024**3}
        refused = client.put("/v1/reservations/too-big", json=reserve)

    assert [(d["index"], d["uuid"], d["memory_total"]) for d in document["devices"]] == [
        (0, "GPU-a10g-0", 24 * 1024**3),
        (1, "GPU-a10g-1", 24 * 1024**3),
    ]
    assert refused.status_code == 409, "the whole card minus the safety margin is the most one can claim"
    assert (node["backend"], node["driver_version"]) == ("nvml", "550.54.15")


@pytest.mark.parametrize(
    ("extra_args", "flag"),
    [
        (["--port-range", "5000-4000"], "--port-range"),
        (["--port-range", "lots"], "--port-range"),
        (["--labels", "novalue"], "--labels"),
        (["--labels", "bad key=1"], "--labels"),
        (["--devices", "tpu"], "--devices"),
        (["--port", "70000"], "--port"),
        (["--memory-safety-margin-mib", "-1"], "--memory-safety-margin-mib"),
        (["--node-name", "-leading-dash"], "--node-name"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    token_file: Path, tmp_path: Path, extra_args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--token-file", str(token_file), "--state-dir", str(tmp_path), *extra_args])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_token_file_must_exist_and_hold_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, complaint in [(tmp_path / "absent", "No such file"), (empty, "empty"), (tmp_path, "regular file")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--token-file", str(path), "--state-dir", str(tmp_path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "--token-file" in err and complaint in err


def test_unusable_state_dir_is_a_usage_error(
    token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["--token-file", str(token_file), "--state-dir", str(blocker / "state")])
    assert exit_info.value.code == 2
    assert "--state-dir" in capsys.readouterr().err


def test_missing_token_file_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "--token-file" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_token_file_open_to_group_or_others_is_refused(
    tmp_path: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-value\n")
    path.chmod(mode)

    with pytest.raises(SystemExit) as exit_info:
        main(["--token-file", str(path), "--state-dir", str(tmp_path / "state")])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--token-file {path} has mode {mode:04o}" in err
    assert f"chmod 600 {path}" in err and "--allow-insecure-token-file" in err
    assert "s3cret-value" not in err
    assert not (tmp_path / "state").exists(), "refused before anything is created"


def test_open_token_file_is_accepted_with_a_warning_when_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-value\n")
    path.chmod(0o644)
    parser = build_parser()

    with caplog.at_level(logging.WARNING):
        config = config_from_args(
            parser,
            parser.parse_args(
                ["--token-file", str(path), "--state-dir", str(tmp_path / "state"), "--labels", "a=1",
                 "--allow-insecure-token-file"]
            ),
        )  # fmt: skip

    assert config.token.get_secret_value() == "s3cret-value"
    assert config.labels == {"a": "1"}
    assert any("chmod 600" in record.getMessage() for record in caplog.records)
    assert not any("s3cret-value" in record.getMessage() for record in caplog.records)


def _nvml_loads() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_loads(), reason="this machine has NVML: --devices nvml works here")
def test_devices_nvml_without_nvml_exits_2_naming_the_flag(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 32)
    token.chmod(0o600)
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}  # no libnvidia-ml.so.1 there, nor on this machine
    result = subprocess.run(
        [sys.executable, "-m", "gpustack_runtime", "--token-file", str(token), "--state-dir", str(tmp_path / "s"),
         "--port", "0", "--devices", "nvml"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--devices nvml: the backend cannot start" in result.stderr
    assert "Traceback" not in result.stderr
