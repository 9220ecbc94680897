"""Replicas on a Kubernetes pool's nodes are held on the agents, never started by them (issue 15).

The KubernetesGpuPool's agents report ``gpustack.ai/runner=kubernetes``; its pods run the engines. Without that
rule ``pulumi up`` would start every such replica twice: once as the pod, once as an agent process. Here two real
agents (fake GPUs through the real NVML code path) report that label, as the DaemonSet's agents do, and the
stack's replicas go through the engine harness:

- each replica's slice says ``runner: kubernetes`` and the replica ends ``held``: an *external* reservation per
  node on its agent, with the pod's instance id and the plan's devices and memory; no instance on any agent, no
  engine process;
- the held memory counts for admission: an instance that would need it is refused (409);
- ``refresh`` sees a reservation removed behind Pulumi's back, and the next ``up`` holds it again;
- removing the deployments frees every reservation.
"""

from __future__ import annotations

import httpx
import pytest
from harness.pulumi_engine import StackHarness
from test_joint_plan_e2e import REPO, _fake_nvml, run_stack

from gpustack_pulumi.providers.model_replica import instance_id

pytestmark = pytest.mark.slow
GIB = 2**30


def _agent(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10, verify=False)


def test_kubernetes_run_replicas_are_held_not_started(tmp_path) -> None:
    from gpustack_pulumi.tinymodel import write_tiny_gguf

    env = _fake_nvml(tmp_path)
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    config = {"gpustack:stateDir": str(tmp_path / "state"), "gpustack:model": str(model), "gpustack:deploy": "0",
              "gpustack:runner": "kubernetes"}  # fmt: skip
    harness = StackHarness(
        run_stack, state_path=tmp_path / "state.json", config=config, cwd=REPO, stack="joint", env=env
    )
    try:
        agents_up = harness.up()
        agents, token = agents_up.outputs["agents"], agents_up.outputs["token"]
        harness.config["gpustack:deploy"] = "1"
        harness.up()

        replicas = {r.name: r.outputs for r in harness.load_state() if r.type.endswith("ModelReplica")}
        assert len(replicas) == 7
        held: dict[str, dict[str, dict]] = {node: {} for node in agents}
        for outs in replicas.values():
            assert outs["runner"] == "kubernetes" and outs["state"] == "held", outs.get("state")
            assert outs["instances"] == [] and outs.get("endpoint") is None  # null: dropped on the wire
            for rank, spec in enumerate(outs["launch"]):
                held[spec["node"]][instance_id(outs["owner"], rank)] = spec
        for node, url in agents.items():
            with _agent(url, token) as agent:
                assert agent.get("/v1/instances").json() == []  # nothing started by the agent
                reservations = {r["id"]: r for r in agent.get("/v1/reservations").json()}
                assert set(reservations) == set(held[node]), node
                for rid, reservation in reservations.items():
                    spec = held[node][rid]
                    assert reservation["external"] is True and reservation["expires_at"] is None
                    assert reservation["device_indices"] == [int(i) for i in spec["visible_devices"]]
                    assert reservation["memory_bytes_per_device"] == spec["memory_bytes_per_device"]
                # The held memory counts: the capacity document shows it allocated, and admission refuses
                # an instance that needs it.
                capacity = agent.get("/v1/capacity").json()
                for device in capacity["devices"]:
                    claimed = sum(r["memory_bytes_per_device"] for r in reservations.values()
                                  if device["index"] in r["device_indices"])  # fmt: skip
                    assert device["memory_allocated"] == claimed
                fullest = max(capacity["devices"], key=lambda d: d["memory_allocated"])
                if fullest["memory_allocated"]:
                    body = {"owner": "intruder", "device_indices": [fullest["index"]],
                            "memory_bytes_per_device": fullest["memory_total"] - fullest["memory_allocated"] + GIB,
                            "launch": {"argv": ["sleep", "60"], "port": 0}}  # fmt: skip
                    refused = agent.put("/v1/instances/intruder", json=body)
                    assert refused.status_code == 409, refused.text

        # A reservation removed behind Pulumi's back: refresh drops the replica, the next up holds it again.
        node, rid = next((n, rid) for n, ids in held.items() for rid in ids)
        with _agent(agents[node], token) as agent:
            assert agent.delete(f"/v1/reservations/{rid}").status_code == 204
        harness.refresh()
        harness.up()
        with _agent(agents[node], token) as agent:
            again = agent.get(f"/v1/reservations/{rid}")
            assert again.status_code == 200 and again.json()["external"] is True

        # The deployments removed: every reservation is freed, the agents stay.
        harness.config["gpustack:deploy"] = "0"
        harness.up()
        for url in agents.values():
            with _agent(url, token) as agent:
                assert agent.get("/v1/reservations").json() == []
    finally:
        harness.destroy()
