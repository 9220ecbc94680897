"""create_backend: explicit kinds, detection, and never crashing for a missing driver."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pynvml
import pytest
from fakenvml import fake_gpu
from gpustack_runtime.devices import (
    AscendBackend,
    DeviceBackend,
    DeviceBackendUnavailable,
    NoneBackend,
    NvmlBackend,
    create_backend,
)

FACTORY_LOGGER = "gpustack_runtime.devices.factory"
NPU_SMI_910B4 = (Path(__file__).parent / "data" / "npu_smi_info_910b4_x2.txt").read_text()


def npu_smi_playing(text: str):
    def runner(arguments: Sequence[str]) -> str:
        assert tuple(arguments) == ("info",)
        return text

    return runner


def npu_smi_missing(arguments: Sequence[str]) -> str:
    raise FileNotFoundError(2, "No such file or directory", "npu-smi")


def test_explicit_nvml_with_driver_not_loaded_fails_naming_the_driver_error(fake_nvml):
    fake = fake_nvml([fake_gpu(0)], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(DeviceBackendUnavailable) as error:
        create_backend("nvml", nvml_library_path=fake.library_path)
    assert "Driver Not Loaded (NVML error 9)" in error.value.reason


def test_explicit_nvml_without_library_fails(tmp_path):
    with pytest.raises(DeviceBackendUnavailable) as error:
        create_backend("nvml", nvml_library_path=tmp_path / "absent" / "libnvidia-ml.so.1")
    assert "cannot load NVML library" in error.value.reason


def test_explicit_nvml_that_works(fake_nvml):
    fake = fake_nvml([fake_gpu(0), fake_gpu(1)])
    backend = create_backend("nvml", nvml_library_path=fake.library_path)
    try:
        assert isinstance(backend, NvmlBackend)
        assert [s.uuid for s in backend.snapshot()] == [fake_gpu(0)["uuid"], fake_gpu(1)["uuid"]]
    finally:
        backend.close()


def test_auto_prefers_nvml(fake_nvml):
    fake = fake_nvml([fake_gpu(0)])
    backend = create_backend("auto", nvml_library_path=fake.library_path, npu_smi_runner=npu_smi_playing(NPU_SMI_910B4))
    try:
        assert backend.name == "nvml"
    finally:
        backend.close()


def test_auto_uses_ascend_when_nvml_is_unavailable(fake_nvml):
    fake = fake_nvml([fake_gpu(0)], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    backend = create_backend("auto", nvml_library_path=fake.library_path, npu_smi_runner=npu_smi_playing(NPU_SMI_910B4))
    assert isinstance(backend, AscendBackend)
    assert [s.product for s in backend.snapshot()] == ["910B4", "910B4"]


def test_auto_passes_over_nvml_without_gpus(fake_nvml):
    fake = fake_nvml([])
    backend = create_backend("auto", nvml_library_path=fake.library_path, npu_smi_runner=npu_smi_playing(NPU_SMI_910B4))
    assert backend.name == "ascend"


def test_auto_without_any_accelerator_is_none(fake_nvml, tmp_path, monkeypatch, caplog):
    fake = fake_nvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    monkeypatch.setenv("PATH", str(tmp_path))  # no npu-smi to find
    with caplog.at_level(logging.INFO, logger=FACTORY_LOGGER):
        backend = create_backend("auto", nvml_library_path=fake.library_path)
    assert isinstance(backend, NoneBackend)
    assert "no accelerator found" in caplog.text


def test_auto_with_broken_npu_smi_is_none(fake_nvml):
    fake = fake_nvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    backend = create_backend("auto", nvml_library_path=fake.library_path, npu_smi_runner=npu_smi_missing)
    assert isinstance(backend, NoneBackend)


def test_explicit_ascend_failure_fails(caplog):
    def failing(arguments: Sequence[str]) -> str:
        raise subprocess.TimeoutExpired(["npu-smi", *arguments], 30)

    with pytest.raises(DeviceBackendUnavailable) as error:
        create_backend("ascend", npu_smi_runner=failing)
    assert "timed out" in error.value.reason


def test_none_and_unknown_kinds():
    backend = create_backend("none")
    assert isinstance(backend, DeviceBackend)
    assert backend.snapshot() == []
    backend.close()
    with pytest.raises(ValueError, match="'cuda' is not one of nvml, ascend, none, auto"):
        create_backend("cuda")  # type: ignore[arg-type]
