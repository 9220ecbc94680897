"""Huawei Ascend NPUs, read from the table that ``npu-smi info`` prints.

``npu-smi info`` prints one two-row block per chip and then a process table::

    | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
    | Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
    | 0     910B3               | OK            | 100.9       40                0    / 0             |
    | 0                         | 0000:C1:00.0  | 0           0    / 0          58626/ 65536         |
    ...
    | NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
    | 0       0                 | 71867         |                          | 55278                   |
    | No running processes found in NPU 1                                                            |

Every chip is one device for the engines (an Atlas A3 "Ascend910" card has two chips, each a separate
device), so each chip becomes one :class:`DeviceSnapshot`, indexed in the order npu-smi lists them, which
is the logical device order ``ASCEND_RT_VISIBLE_DEVICES`` uses. :func:`parse_npu_smi_info` is pure;
:class:`AscendBackend` runs the command through an injectable runner.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from gpustack_runtime.devices.base import (
    DeviceBackendUnavailable,
    DeviceProcess,
    DeviceQueryError,
    DeviceSnapshot,
)

logger = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
"""npu-smi's "MB" are binary megabytes: a 64 GiB 910B reports ``HBM-Usage(MB) ... / 65536``."""

NPU_SMI_COMMAND: Final = ("npu-smi", "info")
NPU_SMI_TIMEOUT_S: Final = 30.0
"""npu-smi talks to every chip through the driver; a hung driver must not hang the agent forever."""

DEFAULT_MAX_AGE_S: Final = 2.0
"""How long one ``npu-smi info`` result serves snapshots. Running the tool is a subprocess (tens to
hundreds of milliseconds), far over the per-request budget, and capacity two seconds old is still fresh
enough for placement, which reserves memory through the agent anyway."""

HCCS_GROUP: Final = "hccs-0"
_HCCS_PRODUCT = re.compile(r"^(Ascend)?910", re.IGNORECASE)
"""Ascend 910 family: the NPUs of one Atlas A2 (910B) server are joined in an HCCS full mesh, and the
dies of an Atlas A3 ("Ascend910") node over HCCS as well, so every NPU of the host reaches every other
without PCIe. Other families (310P inference cards) have no HCCS."""

_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-fx]{2}:[0-9A-Fa-fx]{2}\.[0-9A-Fa-fx]$")
_USAGE_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")
_VERSION = re.compile(r"Version:\s*(\S+)")

NpuSmiRunner = Callable[[Sequence[str]], str]
"""Runs npu-smi with these arguments and returns its standard output."""


class NpuSmiParseError(ValueError):
    """The text is not the ``npu-smi info`` table this parser knows."""


class NpuProcess(BaseModel):
    model_config = ConfigDict(frozen=True)

    pid: int
    name: str | None
    memory_bytes: int


class NpuChip(BaseModel):
    """One chip (one engine-visible device) as ``npu-smi info`` prints it."""

    model_config = ConfigDict(frozen=True)

    npu_id: int = Field(description="The card number npu-smi uses ('NPU' column).")
    chip_id: int = Field(description="The chip on that card ('Chip' column): 0, or 0/1 on dual-die cards.")
    phy_id: int | None = Field(default=None, description="'Phy-ID' column where printed (Atlas A3).")
    name: str
    health: str
    power_w: float | None
    temperature_c: float | None
    bus_id: str | None
    aicore_percent: float | None
    memory_used_bytes: int = Field(description="HBM used, or the on-chip memory on cards without HBM.")
    memory_total_bytes: int
    processes: tuple[NpuProcess, ...] = ()


class NpuSmiInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    driver_version: str | None
    chips: tuple[NpuChip, ...]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _number(token: str, line_number: int, line: str) -> float | None:
    """A reading, or None for npu-smi's "-" and "NA" (e.g. the power of an A3's second die)."""
    if token in ("-", "NA", "N/A"):
        return None
    try:
        return float(token)
    except ValueError:
        raise NpuSmiParseError(f"npu-smi info line {line_number}: {token!r} is not a number: {line!r}") from None


def _is_int(token: str) -> bool:
    return token.isdigit()


def parse_npu_smi_info(text: str) -> NpuSmiInfo:
    """Parse ``npu-smi info`` output into chips with their processes. Pure; raises
    :class:`NpuSmiParseError` for a row it cannot read."""
    driver_version: str | None = None
    pending: tuple[int, str, str, float | None, float | None] | None = None  # the first row of a block
    chips: list[NpuChip] = []
    processes: dict[tuple[int, int], list[NpuProcess]] = {}
    in_process_table = False

    for line_number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("|"):
            continue  # borders (+----+) and anything around the table
        cells = _cells(line)
        first = cells[0]
        if first.startswith("npu-smi"):
            if match := _VERSION.search(line):
                driver_version = match.group(1)
            continue
        if first.startswith("NPU") and any(cell.startswith("Process id") for cell in cells):
            in_process_table = True
            continue
        if in_process_table:
            if first.startswith("No running processes"):
                continue
            if len(cells) < 4:
                raise NpuSmiParseError(f"npu-smi info line {line_number}: short process row: {line!r}")
            ids = first.split()
            if len(ids) != 2 or not all(map(_is_int, ids)) or not _is_int(cells[1]):
                raise NpuSmiParseError(f"npu-smi info line {line_number}: unreadable process row: {line!r}")
            memory_mb = _number(cells[3], line_number, line)
            processes.setdefault((int(ids[0]), int(ids[1])), []).append(
                NpuProcess(
                    pid=int(cells[1]),
                    name=cells[2] or None,
                    memory_bytes=int((memory_mb or 0) * MIB),
                )
            )
            continue
        if len(cells) < 3:
            continue
        tokens = first.split()
        if not tokens or not _is_int(tokens[0]):
            continue  # the column headers ("NPU   Name", "Chip  Phy-ID")
        readings = cells[2].replace("/", " / ").split()
        if len(tokens) >= 2 and not all(map(_is_int, tokens[1:])):
            # First row of a block: "<npu> <name>" | health | power temp hugepages
            if len(readings) < 2:
                raise NpuSmiParseError(f"npu-smi info line {line_number}: expected power and temperature: {line!r}")
            pending = (
                int(tokens[0]),
                " ".join(tokens[1:]),
                cells[1],
                _number(readings[0], line_number, line),
                _number(readings[1], line_number, line),
            )
            continue
        # Second row: "<chip> [<phy-id>]" | bus id | aicore memory-usage [hbm-usage]
        if pending is None:
            raise NpuSmiParseError(f"npu-smi info line {line_number}: chip row without its NPU row: {line!r}")
        pairs = _USAGE_PAIR.findall(cells[2])
        if not pairs:
            raise NpuSmiParseError(f"npu-smi info line {line_number}: no 'used / total' memory: {line!r}")
        used_mb, total_mb = pairs[-1]  # HBM is the last pair when the chip has HBM
        npu_id, name, health, power_w, temperature_c = pending
        pending = None
        chips.append(
            NpuChip(
                npu_id=npu_id,
                chip_id=int(tokens[0]),
                phy_id=int(tokens[1]) if len(tokens) > 1 else None,
                name=name,
                health=health,
                power_w=power_w,
                temperature_c=temperature_c,
                bus_id=cells[1] if _BUS_ID.match(cells[1]) else None,
                aicore_percent=_number(readings[0], line_number, line),
                memory_used_bytes=int(used_mb) * MIB,
                memory_total_bytes=int(total_mb) * MIB,
            )
        )
    # The process table comes after all chips; attach each process to its (NPU, chip).
    return NpuSmiInfo(
        driver_version=driver_version,
        chips=tuple(
            chip.model_copy(update={"processes": tuple(processes.get((chip.npu_id, chip.chip_id), ()))})
            for chip in chips
        ),
    )


def chip_uuid(chip: NpuChip) -> str:
    """npu-smi info prints no UUID; the PCI address is stable for a chip in its slot."""
    if chip.bus_id is not None:
        return f"ascend-{chip.bus_id.lower()}"
    return f"ascend-npu{chip.npu_id}-chip{chip.chip_id}"


def snapshots_from_info(info: NpuSmiInfo) -> list[DeviceSnapshot]:
    """Turn parsed ``npu-smi info`` into device snapshots (index = listing order)."""
    shares_hccs = len(info.chips) >= 2 and all(_HCCS_PRODUCT.match(chip.name) for chip in info.chips)
    return [
        DeviceSnapshot(
            index=index,
            uuid=chip_uuid(chip),
            vendor="ascend",
            product=chip.name,
            memory_total=chip.memory_total_bytes,
            memory_used=chip.memory_used_bytes,
            compute_capability=None,  # a CUDA notion; Ascend has none
            topology_group=HCCS_GROUP if shares_hccs else None,
            pci_bus_id=chip.bus_id,
            utilization_gpu=chip.aicore_percent,
            temperature_c=chip.temperature_c,
            power_w=chip.power_w,
            health=chip.health,
            processes=[
                DeviceProcess(pid=process.pid, used_memory=process.memory_bytes, name=process.name)
                for process in chip.processes
            ],
        )
        for index, chip in enumerate(info.chips)
    ]


def run_npu_smi(arguments: Sequence[str]) -> str:
    """The real runner: ``npu-smi <arguments>``, its standard output."""
    result = subprocess.run(
        [NPU_SMI_COMMAND[0], *arguments],
        capture_output=True,
        text=True,
        timeout=NPU_SMI_TIMEOUT_S,
        check=True,
    )
    return result.stdout


class AscendBackend:
    """Ascend NPUs from ``npu-smi info``, re-read at most every ``max_age_s`` seconds."""

    name = "ascend"

    def __init__(
        self,
        runner: NpuSmiRunner | None = None,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Run ``npu-smi info`` once. Raises :class:`DeviceBackendUnavailable` when the tool is missing,
        fails, or lists no NPU."""
        if runner is None:
            if shutil.which(NPU_SMI_COMMAND[0]) is None:
                raise DeviceBackendUnavailable("ascend", "npu-smi is not on PATH (Ascend driver not installed)")
            runner = run_npu_smi
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0 seconds, got {max_age_s}")
        self._runner = runner
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            info = self._read()
        except DeviceQueryError as error:
            raise DeviceBackendUnavailable("ascend", str(error)) from error
        if not info.chips:
            raise DeviceBackendUnavailable("ascend", "npu-smi info lists no NPU")
        self.driver_version = info.driver_version
        self._cached = snapshots_from_info(info)
        self._read_at = self._clock()

    def _read(self) -> NpuSmiInfo:
        try:
            text = self._runner(NPU_SMI_COMMAND[1:])
        except (OSError, subprocess.SubprocessError) as error:
            raise DeviceQueryError(f"npu-smi info failed: {error}") from error
        try:
            return parse_npu_smi_info(text)
        except NpuSmiParseError as error:
            raise DeviceQueryError(str(error)) from error

    def snapshot(self) -> list[DeviceSnapshot]:
        with self._lock:
            if self._clock() - self._read_at >= self._max_age_s:
                self._cached = snapshots_from_info(self._read())
                self._read_at = self._clock()
            return list(self._cached)

    def close(self) -> None:
        """Nothing to release: every read is a separate npu-smi run."""
