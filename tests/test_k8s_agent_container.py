"""The agent container the KubernetesGpuPool renders, run for real as the kubelet would run it (issue 15).

No kubelet or container runtime here, so the test does what they do with the rendered DaemonSet: it writes the
Secret's items (token, TLS certificate and key, mode 0400 as ``defaultMode`` says) and the node-labels ConfigMap
into directories, points the container's mount paths at them, and runs the container's ``command`` + ``args``
(the shell wrapper that adds the node's labels, then ``gpustack-agent``) in a network namespace of its own, where
the agent's ``--host 0.0.0.0`` reaches nothing but that namespace's loopback. The devices come from the real NVML
code path over the fake ``libnvidia-ml.so.1``.

It shows what a pod on a GPU node would do: the agent starts with the rendered flags (it refuses ``0.0.0.0``
without TLS, so this is the TLS fix working), serves HTTPS with the certificate the pool made, whose fingerprint
the cluster pins, reads the token the Secret gave it, and reports the node's declared labels with the runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from gpustack_runtime.tls import create_certificate, fingerprint_of_pem
from multihost.netns import NAMESPACE_PREFIX, HostSetupError, require_tools
from test_joint_plan_e2e import _fake_nvml

from gpustack_pulumi.pools.kubernetes import render
from gpustack_pulumi.pools.kubernetes.render import KubernetesNode, ModelCache, PoolSettings

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TOKEN = "k8s-agent-token-7d2e"
NODE = KubernetesNode("gpu-node-1", "NVIDIA L4", 2, address="127.0.0.1", labels={"tier": "serving"})
SETTINGS = PoolSettings(
    pool="k8s", namespace="gpustack", agent_image="ghcr.io/acme/gpustack-runtime", agent_version="0.1.0",
    agent_port=10150, gpu_assignment="plan", engine_port=8000, shm_size="16Gi", runtime_class="nvidia",
    hf_token=None, model_cache=ModelCache(pvc=None, host_path="/var/lib/gpustack/hf-cache"),
    secret_name="k8s-secrets", extra_labels={}, engine_images={},
)  # fmt: skip

pytestmark = pytest.mark.slow


def _materialise(volume: dict, values: dict[str, str], directory: Path) -> None:
    """What the kubelet does with a secret or configMap volume: each item a file, with the volume's mode."""
    directory.mkdir(parents=True)
    source = volume.get("secret") or volume.get("configMap") or {}
    items = source.get("items") or [{"key": key, "path": key} for key in values]
    for item in items:
        path = directory / item["path"]
        path.write_text(values[item["key"]])
        path.chmod(source.get("defaultMode", 0o644))


def _client_in(namespace: str, script: str) -> dict:
    result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=60, check=False, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_rendered_agent_container_serves_https_with_the_pools_certificate(tmp_path: Path) -> None:
    try:
        require_tools()
    except HostSetupError as error:
        pytest.fail(f"this test needs root and iproute2 (CI has both): {error}")
    cert_pem, key_pem = create_certificate([NODE.name, "127.0.0.1"])
    fingerprint = fingerprint_of_pem(cert_pem)
    [daemonset] = [o for o in render.render_agent_objects(SETTINGS, [NODE], fingerprint) if o["kind"] == "DaemonSet"]
    labels_map = next(o for o in render.render_agent_objects(SETTINGS, [NODE]) if o["kind"] == "ConfigMap")
    pod = daemonset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_values = {"token": TOKEN, "tls.crt": cert_pem.decode(), "tls.key": key_pem.decode()}
    mounts: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        local = tmp_path / mount["name"]
        volume = volumes[mount["name"]]
        if "secret" in volume:
            _materialise(volume, secret_values, local)
        elif "configMap" in volume:
            _materialise(volume, labels_map["data"], local)
        else:
            local.mkdir()  # the hostPath state directory
        mounts[mount["mountPath"]] = str(local)
    assert oct((tmp_path / "token" / "tls.key").stat().st_mode & 0o777) == "0o400"

    def local_path(word: str) -> str:
        for mount_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
            word = word.replace(mount_path, local)
        return word

    argv = [local_path(word) for word in [*container["command"], *container["args"]]]
    argv = [word.replace("$(NODE_NAME)", NODE.name) for word in argv]  # the kubelet expands $(VAR) in args
    env = {**os.environ, **_fake_nvml(tmp_path), "NODE_NAME": NODE.name, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    env.update({item["name"]: item["value"] for item in container["env"] if "value" in item})

    namespace = f"{NAMESPACE_PREFIX}{os.getpid()}-k8s{uuid.uuid4().hex[:4]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    agent = None
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        log = (tmp_path / "agent.log").open("w")
        agent = subprocess.Popen(["ip", "netns", "exec", namespace, *argv], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        probe = container["readinessProbe"]["httpGet"]
        assert probe["scheme"] == "HTTPS" and probe["path"] == "/healthz"
        script = f"""
import json, time
from gpustack_pulumi.providers.agent_client import AgentClient, AgentError
url, pin = "https://127.0.0.1:{SETTINGS.agent_port}", {fingerprint!r}
deadline = time.monotonic() + 30
while True:
    try:
        with AgentClient(url, {TOKEN!r}, pin) as agent:
            if agent.healthy():
                capacity = agent.capacity()
                break
    except AgentError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("the agent did not serve in 30 s")
    time.sleep(0.3)
try:
    with AgentClient(url, "wrong-token", pin) as agent:
        agent.capacity()
    wrong = "accepted"
except AgentError as error:
    wrong = type(error).__name__ + str(getattr(error, "status", ""))
try:
    with AgentClient(url, {TOKEN!r}, "sha256:" + "0" * 64) as agent:
        agent.capacity()
    impostor = "accepted"
except AgentError as error:
    impostor = type(error).__name__
print(json.dumps({{"name": capacity.name, "labels": capacity.labels, "devices": len(capacity.devices),
                  "wrong": wrong, "impostor": impostor}}))
"""
        try:
            seen = _client_in(namespace, script)
        except AssertionError:
            log.flush()
            raise AssertionError((tmp_path / "agent.log").read_text()[-3000:]) from None
        assert seen["name"] == NODE.name
        assert seen["labels"] == render.node_labels("k8s", NODE)  # tier, pool and runner=kubernetes
        assert seen["labels"]["gpustack.ai/runner"] == "kubernetes"
        assert seen["devices"] == 2
        assert seen["wrong"] == "AgentError401", seen
        assert seen["impostor"] == "AgentCertificateMismatch"  # another certificate: refused before the token goes
    finally:
        if agent is not None:
            for pid in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                                      check=False).stdout.split():  # fmt: skip
                subprocess.run(["kill", "-9", pid], check=False)
            agent.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        time.sleep(0.1)
