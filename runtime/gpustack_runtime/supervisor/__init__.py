"""Engine supervision: start, health-check, restart with backoff, adopt after an agent restart, stop.

:class:`Supervisor` is the interface the agent's HTTP API uses; :func:`container_run_argv` builds the
docker/podman command line of a containerised engine.
"""

from gpustack_runtime.supervisor.backoff import BackoffPolicy
from gpustack_runtime.supervisor.core import NoFreePortError, Supervisor
from gpustack_runtime.supervisor.launch import (
    container_name,
    container_run_argv,
    process_environment,
    validate_instance_id,
)

__all__ = [
    "BackoffPolicy",
    "NoFreePortError",
    "Supervisor",
    "container_name",
    "container_run_argv",
    "process_environment",
    "validate_instance_id",
]
