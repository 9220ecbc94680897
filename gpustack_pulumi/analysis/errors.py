"""Errors of the analysis: each names the field or file at fault and what to do about it."""

from __future__ import annotations


class AnalysisError(ValueError):
    """The model cannot be analysed as given."""


class MissingConfigFieldError(AnalysisError):
    """A config.json lacks a field the architecture needs."""

    def __init__(self, field: str, *, architecture: str, source: str, hint: str = "") -> None:
        self.field = field
        self.architecture = architecture
        self.source = source
        message = f"{source}: config field '{field}' is required for {architecture} models but is missing" + (
            f"; {hint}" if hint else "; add it to config.json (see the model's Hugging Face config)"
        )
        super().__init__(message)


class InvalidConfigFieldError(AnalysisError):
    """A config.json field has a value the analysis cannot use."""

    def __init__(self, field: str, value: object, *, source: str, expected: str) -> None:
        self.field = field
        super().__init__(f"{source}: config field '{field}' = {value!r} is invalid; expected {expected}")


class UnknownQuantizationError(AnalysisError):
    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown quantization '{name}'; valid choices: {', '.join(valid)}")
