"""``gpustack-agent``: run the node agent.

    gpustack-agent --token-file /etc/gpustack-agent/token --state-dir /var/lib/gpustack-agent \\
        --host 10.0.0.5 --port 10150 --tls-dir /etc/gpustack-agent/tls --devices auto --labels zone=a,tier=gpu

    gpustack-agent tls init --dir /etc/gpustack-agent/tls [--name NAME ...]   # prints the fingerprint

The API carries a bearer token that lets its holder run any command line on the host, so it is served over TLS
(``--tls-dir``, or ``--tls-cert``/``--tls-key``) on any address other than loopback: plain HTTP on a
non-loopback address is refused unless ``--insecure-http`` is given. The certificate is self-signed; clients pin
its SHA-256 fingerprint (:mod:`gpustack_runtime.tls`). A token file that its group or other users may read is
refused unless ``--allow-insecure-token-file`` is given.

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
    is_loopback_host,
    parse_labels,
    parse_port_range,
)
from gpustack_runtime.supervisor.core import DEFAULT_START_TIMEOUT_SECONDS
from gpustack_runtime.tls import TlsSetupError, ensure_tls_dir

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
        epilog="`gpustack-agent tls init --dir DIR` creates the TLS certificate and prints its fingerprint.",
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
        "--allow-insecure-token-file",
        action="store_true",
        help="Start even when the token file is readable or writable by its group or other users (refused otherwise).",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="Serve HTTPS with DIR/cert.pem and DIR/key.pem, created (self-signed, fingerprint in DIR/fingerprint) "
        "when DIR holds none.",
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="Serve HTTPS with this PEM certificate.")
    parser.add_argument("--tls-key", type=Path, default=None, help="The private key of --tls-cert (PEM).")
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="Serve plain HTTP on a non-loopback --host (the token then crosses the network in clear text); "
        "without TLS, only loopback addresses are served otherwise.",
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


def read_token(parser: argparse.ArgumentParser, path: Path, *, allow_insecure: bool = False) -> SecretStr:
    """The token from ``path``'s first line. Exits 2 naming ``--token-file`` when it is missing or empty, or
    when its group or other users may read or write it (unless ``allow_insecure``: then it warns)."""
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
    exposed = info.st_mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH)
    if exposed:
        who = "its group" if not exposed & (stat.S_IROTH | stat.S_IWOTH) else "other users"
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        if not allow_insecure:
            parser.error(
                f"--token-file {path} has mode {mode}: {who} may read or change the token, which lets its holder run "
                f"any command on this host; run: chmod 600 {path} (or pass --allow-insecure-token-file)"
            )
        logger.warning(
            "--token-file %s has mode %s: %s may read or change the token (--allow-insecure-token-file); "
            "run: chmod 600 %s",
            path,
            mode,
            who,
            path,
        )
    return SecretStr(token)


def tls_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The certificate and key to serve with, from ``--tls-dir`` (created when empty) or ``--tls-cert`` and
    ``--tls-key``; (None, None) for plain HTTP."""
    if args.tls_dir is not None and (args.tls_cert is not None or args.tls_key is not None):
        parser.error("--tls-dir: give either --tls-dir or --tls-cert with --tls-key, not both")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key: give both (the certificate and its private key) or neither")
    if args.tls_dir is not None:
        names = [name for name in (args.host, args.node_name) if name]
        try:
            made = ensure_tls_dir(args.tls_dir.absolute(), names)
        except TlsSetupError as error:
            parser.error(f"--tls-dir: {error}")
        if made.created:
            logger.info("created a TLS certificate in %s; its fingerprint is %s", args.tls_dir, made.fingerprint)
        return made.cert, made.key
    if args.tls_cert is None:
        return None, None
    from gpustack_runtime.tls import check_pair

    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if not path.is_file():
            parser.error(f"{flag} {path}: not a readable file")
    try:
        check_pair(args.tls_cert, args.tls_key)
    except TlsSetupError as error:
        parser.error(f"--tls-cert/--tls-key: {error}")
    return args.tls_cert.absolute(), args.tls_key.absolute()


def check_exposure(parser: argparse.ArgumentParser, args: argparse.Namespace, tls: bool) -> None:
    """Plain HTTP only on loopback, unless ``--insecure-http``."""
    if tls or is_loopback_host(args.host):
        return
    if not args.insecure_http:
        parser.error(
            f"--host {args.host} is not a loopback address, and without TLS the bearer token (which lets its holder "
            "run any command on this host) would cross the network in clear text: give --tls-dir DIR (a certificate "
            "is created there; clients pin its fingerprint) or --tls-cert/--tls-key, or pass --insecure-http to "
            "serve plain HTTP anyway"
        )
    logger.warning(
        "serving plain HTTP on %s (--insecure-http): the bearer token crosses the network in clear text", args.host
    )


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
    token = read_token(parser, args.token_file, allow_insecure=args.allow_insecure_token_file)
    tls_cert, tls_key = tls_files(parser, args)
    check_exposure(parser, args, tls_cert is not None)
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
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        parser.error(f"{flag_of_field.get(field, field)}: {first['msg']}")
    return config


def build_tls_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpustack-agent tls",
        description="The agent's TLS certificate: self-signed, ECDSA P-256; clients pin its SHA-256 fingerprint.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser(
        "init",
        help="Create DIR/cert.pem, DIR/key.pem (0600) and DIR/fingerprint unless DIR already holds a certificate "
        "(kept, so the pin stays valid); print the fingerprint.",
    )
    init.add_argument("--dir", type=Path, required=True, help="The TLS directory (created 0700).")
    init.add_argument(
        "--name",
        action="append",
        default=[],
        help="A host name or address for the certificate's subject alternative names (repeatable); the host's "
        "name, its addresses and loopback are always added.",
    )
    show = commands.add_parser("fingerprint", help="Print the fingerprint of DIR/cert.pem.")
    show.add_argument("--dir", type=Path, required=True, help="The TLS directory.")
    return parser


def tls_main(argv: Sequence[str]) -> int:
    """``gpustack-agent tls init|fingerprint``: the fingerprint (``sha256:<hex>``) alone on stdout."""
    parser = build_tls_parser()
    args = parser.parse_args(argv)
    if args.command == "fingerprint":
        from gpustack_runtime.tls import CERT_FILE, KEY_FILE, check_pair

        try:
            print(check_pair(args.dir / CERT_FILE, args.dir / KEY_FILE))
        except TlsSetupError as error:
            parser.error(f"--dir: {error}")
        return 0
    try:
        made = ensure_tls_dir(args.dir.absolute(), args.name)
    except TlsSetupError as error:
        parser.error(f"--dir: {error}")
    what = "created" if made.created else "kept"
    print(f"gpustack-agent: TLS certificate {what} in {args.dir}", file=sys.stderr)
    print(made.fingerprint)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tls"]:
        return tls_main(argv[1:])
    parser = build_parser()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(args.log_level.upper())
    config = config_from_args(parser, args)
    if args.engine_start_timeout <= 0:
        parser.error(f"--engine-start-timeout {args.engine_start_timeout}: must be > 0 seconds")
    from gpustack_runtime.devices import DeviceBackendUnavailable

    try:
        return serve(
            config,
            container_cli=args.container_cli,
            log_level=args.log_level,
            start_timeout_seconds=args.engine_start_timeout,
        )
    except DeviceBackendUnavailable as error:
        parser.error(
            f"--devices {config.devices}: the backend cannot start ({error.reason}); install or load the driver, or "
            "use --devices auto (detect, CPU-only when none) or --devices none"
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
            ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        )
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
