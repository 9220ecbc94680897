"""A fake NVML for tests: ``build.build_fake_nvml`` compiles it; :func:`fake_gpu` describes one GPU."""

from __future__ import annotations

from typing import Any

H100_SXM_NAME = "NVIDIA H100 80GB HBM3"
H100_SXM_MEMORY_TOTAL = 85_520_809_984
"""Bytes an H100 SXM5 80GB reports as total (nvidia-smi: 81559 MiB)."""

H100_SXM_POWER_LIMIT_MW = 700_000
"""H100 SXM5 board power limit: 700 W."""


def fake_gpu(index: int, **overrides: Any) -> dict[str, Any]:
    """One H100 SXM in the fake's JSON form (see fake_nvml.c), with a deterministic UUID and PCI address."""
    device: dict[str, Any] = {
        "name": H100_SXM_NAME,
        "uuid": f"GPU-{index:08x}-1111-2222-3333-444455556666",
        "memory_total": H100_SXM_MEMORY_TOTAL,
        "memory_used": 0,
        "utilization": 0,
        "temperature": 30,
        "power_mw": 70_000,
        "power_limit_mw": H100_SXM_POWER_LIMIT_MW,
        "cc_major": 9,
        "cc_minor": 0,
        "pci_bus_id": f"00000000:{0x18 + 0x10 * index:02X}:00.0",
    }
    device.update(overrides)
    return device
