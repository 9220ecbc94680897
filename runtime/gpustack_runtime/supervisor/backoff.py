"""Restart backoff: how long a crashed engine waits before the next start, and when to give up."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BACKOFF_BASE_SECONDS = 10.0
DEFAULT_BACKOFF_MAX_SECONDS = 300.0
"""GPUStack's restart delay is ``min(10 * 2**(n-1), 300)`` s
(``serve_manager._restart_error_model_instance``): 10, 20, 40, ..., 300. Loading a large model takes
minutes, so retrying faster only adds load."""

DEFAULT_MAX_CONSECUTIVE_FAILURES = 5
"""After this many exits in a row without ever answering its health check, an engine is ``failed``: a wrong
flag or a model that does not fit will not fix itself, and with the default delays five tries span 2.5 min."""


DEFAULT_MAX_RESTARTS_IN_WINDOW = 5
DEFAULT_RESTART_WINDOW_SECONDS = 600.0
"""An engine that exits 5 times within 10 minutes is ``failed`` even if it answered its health check in
between (or has no health path, so it counts as ready while it runs): a flapping engine must end somewhere."""


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential restart backoff. ``delay(n)`` is the wait before the start that follows the n-th
    consecutive failure (n >= 1): ``min(base * 2**(n-1), max)``."""

    base_seconds: float = DEFAULT_BACKOFF_BASE_SECONDS
    max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES
    max_restarts_in_window: int = DEFAULT_MAX_RESTARTS_IN_WINDOW
    restart_window_seconds: float = DEFAULT_RESTART_WINDOW_SECONDS

    def __post_init__(self) -> None:
        if self.max_restarts_in_window < 1 or self.restart_window_seconds <= 0:
            raise ValueError(
                "BackoffPolicy.max_restarts_in_window must be >= 1 and restart_window_seconds > 0, got "
                f"{self.max_restarts_in_window} and {self.restart_window_seconds}"
            )
        if self.base_seconds < 0:
            raise ValueError(f"BackoffPolicy.base_seconds must be >= 0, got {self.base_seconds}")
        if self.max_seconds < self.base_seconds:
            raise ValueError(
                f"BackoffPolicy.max_seconds ({self.max_seconds}) must be >= base_seconds ({self.base_seconds})"
            )
        if self.max_consecutive_failures < 1:
            raise ValueError(
                f"BackoffPolicy.max_consecutive_failures must be >= 1, got {self.max_consecutive_failures}"
            )

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before restarting after ``consecutive_failures`` failures in a row."""
        if consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {consecutive_failures}")
        # Cap the exponent so a long crash history cannot overflow the float; 2**64 * base is past any max.
        exponent = min(consecutive_failures - 1, 64)
        return min(self.base_seconds * 2.0**exponent, self.max_seconds)
