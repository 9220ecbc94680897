"""``gpustack-agent``: run the node agent.

    gpustack-agent --token-file /etc/gpustack-agent/token --state-dir /var/lib/gpustack-agent \\
        --host 0.0.0.0 --port 10150 --devices auto --labels zone=a,tier=gpu

SIGTERM or SIGINT starts a graceful shutdown (uvicorn: stop accepting, finish requests for at most
``GRACEFUL_SHUTDOWN_SECONDS``, then the app's lifespan closes the supervisor, which leaves the engines running
so the next agent adopts them); a second SIGINT forces the exit. Bad arguments exit with status 2 and a
message that names the flag.
"""

from __future__ import annotations

import argparse
import logging
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr, ValidationError

from gpustack_runtime.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_MEMORY_SAFETY_MARGIN_BYTES,
    DEFAULT_PORT_RANGE,
    MIB,
    AgentConfig,
    agent_version,
    parse_labels,
    parse_port_range,
)
from gpustack_runtime.supervisor.core import DEFAULT_START_TIMEOUT_SECONDS

logger = logging.getLogger("gpustack_runtime.cli")

DEFAULT_STATE_DIR = Path("/var/lib/gpustack-agent")

GRACEFUL_SHUTDOWN_SECONDS = 5
"""Bound on the graceful phase: open ``logs?follow=true`` streams never end on their own, so without a bound a
SIGTERM would wait for every log follower to hang up."""

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpustack-agent",
        description="The gpustack-pulumi node agent: live GPU capacity, reservations and engine supervision "
        "over an HTTP API with a bearer token.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {agent_version()}")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: %(default)s).")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_AGENT_PORT, help="TCP port to listen on (default: %(default)s)."
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="File holding the bearer token (first line). Keep it mode 0600.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="Reservations, instance state and engine logs (default: %(default)s).",
    )
    parser.add_argument(
        "--devices",
        choices=["nvml", "ascend", "none", "auto"],
        default="auto",
        help="Device backend; auto tries NVML, then Ascend, then none (default: %(default)s).",
    )
    parser.add_argument(
        "--port-range",
        default=f"{DEFAULT_PORT_RANGE[0]}-{DEFAULT_PORT_RANGE[1]}",
        help="Ports handed to engines that ask for port 0, LOW-HIGH (default: %(default)s).",
    )
    parser.add_argument("--labels", default="", help="Node labels for the capacity document: k=v,k2=v2.")
    parser.add_argument("--node-name", default=None, help="Node name (default: the hostname).")
    parser.add_argument(
        "--memory-safety-margin-mib",
        type=int,
        default=DEFAULT_MEMORY_SAFETY_MARGIN_BYTES // MIB,
        help="Memory per device never admitted, in MiB (default: %(default)s).",
    )
    parser.add_argument(
        "--container-cli",
        default=None,
        help="docker or podman executable for instances with an image (default: found on PATH).",
    )
    parser.add_argument(
        "--engine-start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="An engine that has not answered its health check this long after a start is stopped and marked "
        "failed (default: %(default)s).",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="Log level (default: %(default)s).",
    )
    return parser


def read_token(parser: argparse.ArgumentParser, path: Path) -> SecretStr:
    """The token from ``path``'s first line. Exits 2 naming ``--token-file`` when it is missing or empty;
    warns when other users may read it."""
    try:
        info = path.stat()
    except OSError as error:
        parser.error(f"--token-file {path}: {error.strerror or error}")
    if not stat.S_ISREG(info.st_mode):
        parser.error(f"--token-file {path}: not a regular file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        parser.error(f"--token-file {path}: cannot read it ({error})")
    token = lines[0].strip() if lines else ""
    if not token:
        parser.error(f"--token-file {path}: the file is empty; write a random token (openssl rand -hex 32)")
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        logger.warning("--token-file %s is readable by every user; run: chmod 600 %s", path, path)
    return SecretStr(token)


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> AgentConfig:
    """Validate the parsed flags into an :class:`AgentConfig`; any error exits 2 naming its flag."""
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: must be 0-65535")
    if args.memory_safety_margin_mib < 0:
        parser.error(f"--memory-safety-margin-mib {args.memory_safety_margin_mib}: must be >= 0")
    try:
        port_range = parse_port_range(args.port_range)
    except ValueError as error:
        parser.error(f"--port-range: {error}")
    try:
        labels = parse_labels(args.labels)
    except ValueError as error:
        parser.error(f"--labels: {error}")
    token = read_token(parser, args.token_file)
    try:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--state-dir {args.state_dir}: cannot create it ({error.strerror or error})")
    flag_of_field = {
        "node_name": "--node-name",
        "labels": "--labels",
        "token": "--token-file",
        "state_dir": "--state-dir",
    }
    try:
        config = AgentConfig(
            node_name=args.node_name or socket.gethostname(),
            labels=labels,
            token=token,
            state_dir=args.state_dir.absolute(),
            memory_safety_margin_bytes=args.memory_safety_margin_mib * MIB,
            host=args.host,
            port=args.port,
            devices=args.devices,
            port_range=port_range,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        parser.error(f"{flag_of_field.get(field, field)}: {first['msg']}")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(args.log_level.upper())
    config = config_from_args(parser, args)
    if args.engine_start_timeout <= 0:
        parser.error(f"--engine-start-timeout {args.engine_start_timeout}: must be > 0 seconds")
    return serve(
        config,
        container_cli=args.container_cli,
        log_level=args.log_level,
        start_timeout_seconds=args.engine_start_timeout,
    )


def serve(
    config: AgentConfig,
    *,
    container_cli: str | None,
    log_level: str,
    start_timeout_seconds: float = DEFAULT_START_TIMEOUT_SECONDS,
) -> int:
    """Build the backend, the supervisor and the app, and run uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    from gpustack_runtime.app import create_app
    from gpustack_runtime.devices.factory import create_backend
    from gpustack_runtime.supervisor import Supervisor

    backend = create_backend(config.devices)
    supervisor = Supervisor(
        config.state_dir,
        port_range=config.port_range,
        container_cli=container_cli,
        start_timeout_seconds=start_timeout_seconds,
    )
    app = create_app(config, backend, supervisor)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            log_config=None,  # keep the root logging set up in main(); uvicorn's own config would replace it
            server_header=False,
        )
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
