"""The agent's configuration: one typed model, filled by the CLI (:mod:`gpustack_runtime.cli`) or by tests.

Every default lives here once, next to the reason for its value.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gpustack_runtime import __version__
from gpustack_runtime.wire import is_loopback_host  # noqa: F401 (the config API names it; cli imports it here)

DISTRIBUTION_NAME = "gpustack-runtime"

MIB = 1024 * 1024

DEFAULT_MEMORY_SAFETY_MARGIN_BYTES = 1024 * MIB
"""Memory per device that admission never hands out (``--memory-safety-margin-mib``).

It covers memory that the driver counts as used but that no claim and no listed process accounts for. On an
H200 (driver 580.159, 2026-11) NVML reported 624 MiB used beyond the sum of its listed processes as soon as one
CUDA context existed, and 629 MiB with two (nvidia-smi shows 0 MiB on the idle card): a device-wide reserve
that appears with the first context. 1 GiB covers that with headroom for allocator fragmentation. It is 0.7 %
of an H200, 1.25 % of an 80 GiB H100 and 6 % of a 16 GiB card; lower it on small cards if needed. The engines'
own per-process context and CUDA-graph memory are part of their claims (the placement memory model adds them)
and of their listed processes, so the margin does not need to cover those.
"""

DEFAULT_PORT_RANGE = (40000, 40063)
"""Engine ports: GPUStack's ``service_port_range`` default (gpustack ``serve_manager._assign_ports``)."""

DEFAULT_AGENT_PORT = 10150
"""GPUStack's documented worker API port; nothing else in this project uses it."""

DEFAULT_RESERVATION_SWEEP_SECONDS = 5.0
"""How often expired reservations are dropped from ``reservations.json``. Expiry itself is checked on every
request, so this only bounds how long a stale entry stays in the file and in ``/metrics``."""

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""1 MiB: the largest legitimate body (an instance with a long argv and env) is a few KiB."""

DeviceBackendKind = Literal["nvml", "ascend", "none", "auto"]

LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?$")
"""Kubernetes-like label keys: letters, digits and ``_.-/`` inside, so they survive as Prometheus label values
and as YAML keys without quoting surprises."""

NODE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,251}[A-Za-z0-9])?$")


class AgentConfig(BaseModel):
    """Everything the agent needs to serve. Paths are absolute once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_name: str = Field(description="Name in the capacity document; defaults to the hostname in the CLI.")
    labels: dict[str, str] = Field(default_factory=dict, description="Copied into the capacity document.")
    token: SecretStr = Field(description="Bearer token every request except /healthz must carry.")
    state_dir: Path = Field(description="Holds reservations.json (and the supervisor's state).")
    memory_safety_margin_bytes: Annotated[int, Field(ge=0)] = DEFAULT_MEMORY_SAFETY_MARGIN_BYTES
    reservation_sweep_seconds: Annotated[float, Field(gt=0)] = DEFAULT_RESERVATION_SWEEP_SECONDS
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_AGENT_PORT
    devices: DeviceBackendKind = "auto"
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    max_body_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_BODY_BYTES
    """Larger request bodies are refused with 413 before they are read."""
    tls_cert: Path | None = None
    """PEM certificate the API is served with (HTTPS); None: plain HTTP, which the CLI allows on loopback only
    (or with ``--insecure-http``)."""
    tls_key: Path | None = None
    """The certificate's private key (PEM); given together with ``tls_cert``."""

    @field_validator("node_name")
    @classmethod
    def _node_name_is_dns_like(cls, value: str) -> str:
        if not NODE_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"node name {value!r} must be 1-253 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels_are_plain(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if not LABEL_KEY_PATTERN.fullmatch(key):
                raise ValueError(
                    f"label key {key!r} must be letters, digits and '_.-/', starting and ending with a letter or digit"
                )
        return labels

    @field_validator("token")
    @classmethod
    def _token_is_usable(cls, token: SecretStr) -> SecretStr:
        value = token.get_secret_value()
        if not value:
            raise ValueError("the token is empty; write a random secret (e.g. `openssl rand -hex 32`)")
        if any(ch.isspace() for ch in value) or not value.isprintable():
            raise ValueError("the token must be printable, without whitespace (it goes in an HTTP header)")
        return token

    @model_validator(mode="after")
    def _port_range_is_ordered(self) -> AgentConfig:
        low, high = self.port_range
        if not (1 <= low <= high <= 65535):
            raise ValueError(f"port range {low}-{high} must satisfy 1 <= low <= high <= 65535")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> AgentConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both the TLS certificate and its key, or neither")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def reservations_file(self) -> Path:
        return self.state_dir / "reservations.json"


def parse_labels(text: str) -> dict[str, str]:
    """``"zone=a,tier=gpu"`` -> ``{"zone": "a", "tier": "gpu"}``. Empty text gives no labels."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def parse_port_range(text: str) -> tuple[int, int]:
    """``"40000-40063"`` -> ``(40000, 40063)``."""
    low_text, sep, high_text = text.partition("-")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ValueError(f"port range {text!r} is not LOW-HIGH, e.g. 40000-40063") from None
    if not sep or not (1 <= low <= high <= 65535):
        raise ValueError(f"port range {text!r} must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
    return low, high


def agent_version() -> str:
    """The installed distribution's version (what pip installed and ``install.sh`` compares), falling back to
    the package's ``__version__`` when it runs from a source tree that is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION_NAME)
    except importlib.metadata.PackageNotFoundError:
        return __version__
