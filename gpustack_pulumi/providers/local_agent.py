"""Moved to :mod:`gpustack_pulumi.pools.local.provider`. Kept because stacks created before the move hold the
provider pickled by reference to this module; their next update or destroy unpickles it from here."""

from gpustack_pulumi.pools.local.provider import LocalAgentProvider, process_start_time, same_process_running

__all__ = ["LocalAgentProvider", "process_start_time", "same_process_running"]
