"""The backend of a CPU-only node: no accelerators."""

from __future__ import annotations

from gpustack_runtime.devices.base import DeviceSnapshot


class NoneBackend:
    """No devices. Used on CPU-only nodes and whenever the configured backend is unavailable."""

    name = "none"
    driver_version: str | None = None

    def snapshot(self) -> list[DeviceSnapshot]:
        return []

    def close(self) -> None:
        """Nothing to release."""
