"""Shared fixtures of the runtime tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# ================================================================================================
# Fake NVML (device backends): a compiled fake libnvidia-ml.so.1 driven by a JSON file.
# See runtime/tests/fakenvml/fake_nvml.c for the JSON format.
# ================================================================================================
from fakenvml.build import CONFIG_ENV, build_fake_nvml


@dataclass(frozen=True)
class FakeNvml:
    """A configured fake NVML: pass ``library_path`` to NvmlBackend / create_backend(nvml_library_path=...),
    or put ``library_dir`` on LD_LIBRARY_PATH (with FAKE_NVML_CONFIG=config_path) for a subprocess."""

    library_path: Path
    config_path: Path

    @property
    def library_dir(self) -> Path:
        return self.library_path.parent

    def reconfigure(self, devices: list[dict[str, Any]], **settings: Any) -> None:
        """Describe a different machine; the fake reads it on the next nvmlInit."""
        self.config_path.write_text(json.dumps({"driver_version": "550.54.15", **settings, "devices": devices}))


@pytest.fixture(scope="session")
def fake_nvml_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake NVML with every function the backend uses, built once per session."""
    return build_fake_nvml(tmp_path_factory.mktemp("fakenvml"))


@pytest.fixture(scope="session")
def fake_nvml_minimal_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake NVML without the optional functions (like an old driver)."""
    return build_fake_nvml(tmp_path_factory.mktemp("fakenvml-minimal"), minimal=True)


@pytest.fixture
def fake_nvml(
    fake_nvml_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Callable[..., FakeNvml]:
    """Factory: ``fake_nvml(devices=[fake_gpu(0), ...], init_error=0, minimal=False)`` writes the machine
    description, points FAKE_NVML_CONFIG at it and returns the library to load."""

    def configure(
        devices: list[dict[str, Any]] | None = None,
        *,
        init_error: int = 0,
        driver_version: str = "550.54.15",
        minimal: bool = False,
    ) -> FakeNvml:
        library = request.getfixturevalue("fake_nvml_minimal_library") if minimal else fake_nvml_library
        fake = FakeNvml(
            library_path=library,
            config_path=tmp_path / "fake-nvml.json",
        )
        fake.reconfigure(devices or [], init_error=init_error, driver_version=driver_version)
        monkeypatch.setenv(CONFIG_ENV, str(fake.config_path))
        return fake

    return configure


# ================================================================================================
# End of the fake NVML section.
# ================================================================================================
