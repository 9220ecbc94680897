"""The shell commands that install, start and remove the node agent on an SSH host.

Pure: it renders strings and touches nothing. ``SshNodePool`` hands these strings to ``pulumi_command.remote``
(``CopyToRemote`` puts ``install.sh``/``uninstall.sh`` on the host, ``Command`` runs :func:`render_install_command`
on create and update and :func:`render_uninstall_command` on delete); the multi-host tests run the very strings
the resource graph holds over real SSH.

What runs on the host (bash, as the SSH user):

1. ``install.sh`` from ``runtime/install/`` with the agent's flags and ``--token-stdin`` (the token arrives on the
   command's stdin, never on a command line); it reports ``nothing changed`` on a repeated run. It makes the
   agent's TLS certificate on the first run, keeps it on every later one, and prints its fingerprint as
   ``GPUSTACK_AGENT_FINGERPRINT=sha256:<hex>`` (:func:`parse_fingerprint` reads it from the command's stdout).
2. The agent's extra environment (e.g. ``CUDA_VISIBLE_DEVICES``) into ``agent.env`` next to the token.
3. Runtime ``process``: systemd runs the agent where the host has systemd and the layout is the system one
   (``install.sh`` enables and restarts the unit; a drop-in points it at ``agent.env``). Elsewhere (no systemd,
   or an install under ``agent_root``) the agent runs as a detached process recorded in a pid file, started
   with the unit's own ``ExecStart`` line and restarted only when something changed.
   Runtime ``container``: ``docker run`` of the agent image, replaced when the image or flags change; the agent
   makes its certificate in the mounted TLS directory on its first start.
4. Wait until ``/healthz`` answers over HTTPS with the certificate of the TLS directory (its fingerprint checked,
   as clients pin it), or fail with the agent's last log lines; the container runtime then prints the
   ``GPUSTACK_AGENT_FINGERPRINT=`` line.

The agent serves HTTPS only, bound to the address the pool reaches the host at (``bind_address``).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

AGENT_PROGRAM = "gpustack-agent"
AGENT_DISTRIBUTION = "gpustack-runtime"
UNIT_NAME = "gpustack-agent.service"
CONTAINER_NAME = "gpustack-agent"
INSTALL_SCRIPT_NAME = "install.sh"
UNINSTALL_SCRIPT_NAME = "uninstall.sh"
NOTHING_CHANGED_LINE = "gpustack-agent: nothing changed"
"""The last line install.sh prints when a run changed nothing (runtime/install/install.sh)."""
FINGERPRINT_LINE = re.compile(r"^GPUSTACK_AGENT_FINGERPRINT=(sha256:[0-9a-f]{64})$", re.MULTILINE)
"""The line install.sh (and the container start) prints with the agent's TLS certificate fingerprint."""

AGENT_HEALTH_TIMEOUT_S = 60
"""How long the install command waits for /healthz after (re)starting the agent: a cold Python start of the
agent takes 1-3 s on a small host; the margin covers slow disks."""
AGENT_STOP_GRACE_S = 15
"""SIGTERM, then SIGKILL after this long (the agent's own graceful shutdown is bounded at a few seconds)."""

# install.sh refuses values outside this set (its SAFE_VALUE): checking here gives the error at preview.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:=/@+-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Runtime = Literal["process", "container"]
Devices = Literal["auto", "nvml", "ascend", "none"]


class AgentLayout(BaseModel):
    """Where the agent lives on the host. The defaults are install.sh's; ``under(root)`` moves everything below
    one directory (a non-root SSH user's home, or one "host" of several sharing a disk in tests)."""

    model_config = ConfigDict(frozen=True)

    prefix: str = "/opt/gpustack-agent"
    config_dir: str = "/etc/gpustack-agent"
    state_dir: str = "/var/lib/gpustack-agent"
    unit_dir: str = "/etc/systemd/system"
    staging_dir: str = "/var/lib/gpustack-agent-installer"
    """Where CopyToRemote puts install.sh and uninstall.sh (it creates the directory); the delete command
    needs uninstall.sh there."""
    system: bool = True
    """The system layout: systemd may run the agent. False under a custom root (its unit is not loaded)."""

    @classmethod
    def under(cls, root: str | None) -> AgentLayout:
        if not root:
            return cls()
        base = root.rstrip("/")
        return cls(
            prefix=f"{base}/opt/gpustack-agent",
            config_dir=f"{base}/etc/gpustack-agent",
            state_dir=f"{base}/var/lib/gpustack-agent",
            unit_dir=f"{base}/etc/systemd/system",
            staging_dir=f"{base}/var/lib/gpustack-agent-installer",
            system=False,
        )

    @property
    def venv(self) -> str:
        return f"{self.prefix}/venv"

    @property
    def token_path(self) -> str:
        return f"{self.config_dir}/token"

    @property
    def tls_dir(self) -> str:
        """install.sh's default --tls-dir: the agent's certificate, key and fingerprint."""
        return f"{self.config_dir}/tls"

    @property
    def env_file(self) -> str:
        return f"{self.config_dir}/agent.env"

    @property
    def pid_file(self) -> str:
        return f"{self.state_dir}/agent.pid"

    @property
    def log_file(self) -> str:
        return f"{self.state_dir}/agent.log"

    @property
    def install_script(self) -> str:
        return f"{self.staging_dir}/{INSTALL_SCRIPT_NAME}"

    @property
    def uninstall_script(self) -> str:
        return f"{self.staging_dir}/{UNINSTALL_SCRIPT_NAME}"

    def path_flags(self) -> list[str]:
        """The flags install.sh and uninstall.sh both take to find the installation."""
        return [
            f"--prefix={self.prefix}",
            f"--config-dir={self.config_dir}",
            f"--state-dir={self.state_dir}",
            f"--unit-dir={self.unit_dir}",
        ]


class AgentInstallSpec(BaseModel):
    """Everything the install command of one host depends on (so: what makes it run again when it changes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_name: str
    bind_address: str = "0.0.0.0"
    port: int = Field(default=10150, ge=1, le=65535)
    port_range: str | None = None
    devices: Devices = "auto"
    labels: dict[str, str] = Field(default_factory=dict)
    runtime: Runtime = "process"
    agent_version: str
    agent_source: str | None = None
    """What pip installs (default ``gpustack-runtime==<agent_version>``)."""
    pip_args: tuple[str, ...] = ()
    python: str = "python3"
    environment: dict[str, str] = Field(default_factory=dict)
    container_image: str | None = None
    layout: AgentLayout = Field(default_factory=AgentLayout)
    scripts_sha256: str
    """Hash of install.sh + uninstall.sh: part of the command, so a changed script re-runs the install."""

    @field_validator("environment")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"environment name '{name}' must be letters, digits and _ (not starting with a digit)")
            if not SAFE_VALUE.match(item):
                raise ValueError(f"environment value of {name} may only contain letters, digits and _.,:=/@+-")
        return value

    @property
    def source(self) -> str:
        return self.agent_source or f"{AGENT_DISTRIBUTION}=={self.agent_version}"

    @property
    def health_host(self) -> str:
        """Where the install command checks the agent from the host itself."""
        if self.bind_address == "0.0.0.0":
            return "127.0.0.1"
        return "::1" if self.bind_address == "::" else self.bind_address

    @property
    def health_url(self) -> str:
        host = f"[{self.health_host}]" if ":" in self.health_host else self.health_host
        return f"https://{host}:{self.port}/healthz"

    def agent_flags(self) -> list[str]:
        flags = [
            f"--host={self.bind_address}",
            f"--port={self.port}",
            f"--devices={self.devices}",
            f"--node-name={self.node_name}",
        ]
        if self.port_range:
            flags.append(f"--port-range={self.port_range}")
        if self.labels:
            flags.append("--labels=" + ",".join(f"{key}={value}" for key, value in sorted(self.labels.items())))
        return flags


def scripts_sha256(install_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in (INSTALL_SCRIPT_NAME, UNINSTALL_SCRIPT_NAME):
        digest.update(name.encode() + b"\0" + (install_dir / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _quote_all(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def _as_bash(script: str) -> str:
    """pulumi_command runs the string through the user's login shell, which may be sh: hand it to bash."""
    return f"bash -c {shlex.quote(script)}"


def render_install_command(spec: AgentInstallSpec) -> str:
    """The create/update command: install or upgrade, (re)start when something changed, wait until healthy.
    The token is read from stdin by install.sh (``--token-stdin``)."""
    layout = spec.layout
    q = shlex.quote
    env_lines = "".join(f"{name}={value}\n" for name, value in sorted(spec.environment.items()))
    lines = [
        "set -euo pipefail",
        "umask 077",
        # Recorded here so that a new script or agent version changes this command, and pulumi re-runs it.
        f"# gpustack-agent {spec.agent_version}, scripts sha256 {spec.scripts_sha256}",
        f"STATE_DIR={q(layout.state_dir)}",
        f"PID_FILE={q(layout.pid_file)}",
        f"LOG_FILE={q(layout.log_file)}",
        f"ENV_FILE={q(layout.env_file)}",
        f"TOKEN_PATH={q(layout.token_path)}",
        f"UNIT_FILE={q(layout.unit_dir + '/' + UNIT_NAME)}",
        f"HEALTH_URL={q(spec.health_url)}",
        f"HEALTH_HOST={q(spec.health_host)}",
        f"HEALTH_PORT={spec.port}",
        f"TLS_DIR={q(layout.tls_dir)}",
        f"PYTHON={q(spec.python)}",
        *(_container_token_lines() if spec.runtime == "container" else _install_script_lines(spec)),
        # The agent's environment, rewritten only when it differs.
        'mkdir -p "$(dirname "$ENV_FILE")" "$STATE_DIR"',
        f"wanted_env={q(env_lines)}",
        'if [[ ! -f $ENV_FILE ]] || [[ $(cat "$ENV_FILE"; echo x) != "${wanted_env}x" ]]; then',
        '    printf "%s" "$wanted_env" >"$ENV_FILE"; changed=yes; echo "gpustack-agent: environment written"',
        "fi",
        STOP_FUNCTION,
    ]
    if spec.runtime == "container":
        lines += _container_start_lines(spec)
    else:
        lines += process_start_lines(layout.system)
    lines.append(WAIT_HEALTHY)
    if spec.runtime == "container":
        # install.sh prints this line for the process runtime; the container made its certificate itself.
        lines.append('echo "GPUSTACK_AGENT_FINGERPRINT=$(cat "$TLS_DIR/fingerprint")"')
    lines.append('echo "gpustack-agent: healthy at $HEALTH_URL"')
    return _as_bash("\n".join(lines))


def parse_fingerprint(stdout: str | None) -> str | None:
    """The agent's certificate fingerprint (``sha256:<hex>``) from the install command's stdout: its last
    ``GPUSTACK_AGENT_FINGERPRINT=`` line; None when there is none."""
    found = FINGERPRINT_LINE.findall(stdout or "")
    return found[-1] if found else None


def render_uninstall_command(spec: AgentInstallSpec) -> str:
    """The delete command: stop the agent (systemd, pid file or container), then uninstall.sh, which stops the
    engines from the agent's state file and removes the venv, unit and token; then the staging directory."""
    layout = spec.layout
    q = shlex.quote
    uninstall_words = ["bash", layout.uninstall_script, *layout.path_flags()]
    if spec.runtime == "container" or not layout.system:
        uninstall_words.append("--no-systemd")
    lines = [
        "set -euo pipefail",
        f"PID_FILE={q(layout.pid_file)}",
        STOP_FUNCTION,
        "stop_agent",
    ]
    if spec.runtime == "container":
        lines.append(
            f"docker rm -f {CONTAINER_NAME} >/dev/null 2>&1 && echo 'gpustack-agent: container removed' || true"
        )
    lines += [
        f'if [[ -f {q(layout.uninstall_script)} ]]; then {_quote_all(uninstall_words)}; else echo "gpustack-agent:'
        f' {layout.uninstall_script} is gone; nothing to uninstall"; fi',
        f"rm -f {q(layout.env_file)}",
        f"rmdir {q(layout.config_dir)} 2>/dev/null || true",
        f"rm -rf {q(layout.staging_dir)}",
    ]
    return _as_bash("\n".join(lines))


# A pid counts only if that process is the agent (its command line names the agent program): a recycled pid
# of another process is never signalled.
STOP_FUNCTION = f"""\
agent_pid() {{
    [[ -f $PID_FILE ]] || return 1
    local pid; pid=$(cat "$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] && tr '\\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q {AGENT_PROGRAM} || return 1
    echo "$pid"
}}
stop_agent() {{
    local pid
    if pid=$(agent_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq {AGENT_STOP_GRACE_S * 10}); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        echo "gpustack-agent: stopped process $pid"
    fi
    rm -f "$PID_FILE"
}}"""


def process_start_lines(system_layout: bool) -> list[str]:
    start_detached = [
        "    stop_agent",
        # The unit's ExecStart is the one command line of the agent: install.sh renders it from the flags.
        '    exec_start=$(sed -n "s/^ExecStart=//p" "$UNIT_FILE")',
        '    [[ -n $exec_start ]] || { echo "install.sh wrote no ExecStart to $UNIT_FILE" >&2; exit 1; }',
        # setsid: its own session, so the agent outlives this SSH session; the values are install.sh-checked
        # plain words, so word splitting of $exec_start is exact.
        '    (set -a; . "$ENV_FILE"; set +a; exec setsid $exec_start </dev/null >>"$LOG_FILE" 2>&1) &',
        '    echo $! >"$PID_FILE"',
        '    echo "gpustack-agent: started process $(cat "$PID_FILE")"',
    ]
    detached = [
        "if [[ $changed == yes ]] || ! agent_pid >/dev/null; then",
        *start_detached,
        "fi",
    ]
    if not system_layout:
        return detached
    dropin = f"/etc/systemd/system/{UNIT_NAME}.d/environment.conf"
    return [
        "if [[ -d /run/systemd/system ]]; then",
        f"    dropin={shlex.quote(dropin)}",
        '    wanted_dropin=$(printf "[Service]\\nEnvironmentFile=%s\\n" "$ENV_FILE")',
        '    if [[ ! -f $dropin ]] || [[ $(cat "$dropin") != "$wanted_dropin" ]]; then',
        '        mkdir -p "$(dirname "$dropin")"; printf "%s\\n" "$wanted_dropin" >"$dropin"; changed=yes',
        "    fi",
        f"    if [[ $changed == yes ]]; then systemctl daemon-reload; systemctl restart {UNIT_NAME}; fi",
        "else",
        *["    " + line for line in detached],
        "fi",
    ]


def _install_script_lines(spec: AgentInstallSpec) -> list[str]:
    layout = spec.layout
    install_words = [
        "bash",
        layout.install_script,
        *layout.path_flags(),
        f"--source={spec.source}",
        f"--python={spec.python}",
        *[f"--pip-arg={arg}" for arg in spec.pip_args],
        *spec.agent_flags(),
        "--token-stdin",
    ]
    if not layout.system:
        install_words.append("--no-systemd")
    return [
        "report=$(" + _quote_all(install_words) + ' 2>&1) || { echo "$report" >&2; exit 1; }',
        'echo "$report"',
        "changed=yes",
        f'[[ $(tail -n 1 <<<"$report") == {shlex.quote(NOTHING_CHANGED_LINE)} ]] && changed=no',
    ]


def _container_token_lines() -> list[str]:
    """The container carries the agent: only the token file is needed on the host (from stdin, 0600)."""
    return [
        "changed=no",
        'mkdir -p "$(dirname "$TOKEN_PATH")"',
        'IFS= read -r token || true; [[ -n $token ]] || { echo "no token on stdin" >&2; exit 2; }',
        'if [[ ! -f $TOKEN_PATH ]] || [[ $(cat "$TOKEN_PATH") != "$token" ]]; then',
        '    printf "%s\\n" "$token" >"$TOKEN_PATH.new"; mv -f "$TOKEN_PATH.new" "$TOKEN_PATH"; changed=yes',
        "fi",
        "unset token",
    ]


def _container_start_lines(spec: AgentInstallSpec) -> list[str]:
    layout = spec.layout
    run_flags = [
        "--detach", "--name", CONTAINER_NAME, "--restart", "unless-stopped",
        "--network", "host", "--pid", "host",
        "--env-file", layout.env_file,
        "--volume", f"{layout.token_path}:{layout.token_path}:ro",
        "--volume", f"{layout.tls_dir}:{layout.tls_dir}",
        "--volume", f"{layout.state_dir}:{layout.state_dir}",
    ]  # fmt: skip
    if spec.devices in ("auto", "nvml"):
        run_flags += ["--gpus", "all"]
    agent_words = [
        f"{spec.container_image}:{spec.agent_version}",
        AGENT_PROGRAM,
        *spec.agent_flags(),
        f"--token-file={layout.token_path}",
        f"--tls-dir={layout.tls_dir}",
        f"--state-dir={layout.state_dir}",
    ]
    # The container is labelled with a hash of how it was started: a changed image or flag replaces it.
    run_hash = hashlib.sha256(_quote_all(run_flags + agent_words).encode()).hexdigest()[:16]
    docker_run = _quote_all(["docker", "run", "--label", f"gpustack.run={run_hash}", *run_flags, *agent_words])
    inspect = _quote_all(["docker", "inspect", "--format", '{{index .Config.Labels "gpustack.run"}}', CONTAINER_NAME])
    return [
        # The agent makes its certificate here on its first start (and keeps it: the pin stays valid).
        'mkdir -p "$TLS_DIR"; chmod 700 "$TLS_DIR"',
        f"current=$({inspect} 2>/dev/null || true)",
        f"if [[ $changed == yes || $current != {run_hash} ]]; then",
        f"    docker rm -f {CONTAINER_NAME} >/dev/null 2>&1 || true",
        f"    {docker_run} >/dev/null",
        '    echo "gpustack-agent: container started"',
        "fi",
    ]


WAIT_HEALTHY = f"""\
"$PYTHON" - "$HEALTH_HOST" "$HEALTH_PORT" "$TLS_DIR/fingerprint" {AGENT_HEALTH_TIMEOUT_S} <<'EOF' || \
{{ echo "the agent did not answer $HEALTH_URL; last log lines:" >&2; tail -n 20 "$LOG_FILE" >&2 2>/dev/null; exit 1; }}
# GET /healthz over TLS, trusting only the certificate whose SHA-256 is in the TLS directory's fingerprint file.
import hashlib, socket, ssl, sys, time
host, port, pin_file, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the pin below is the check
deadline = time.monotonic() + timeout
last = "no answer"
while True:
    try:
        with open(pin_file) as file:
            pin = file.read().strip()
        with socket.create_connection((host, port), timeout=2) as raw, context.wrap_socket(raw) as tls:
            seen = "sha256:" + hashlib.sha256(tls.getpeercert(True) or b"").hexdigest()
            if seen != pin:
                last = f"the agent's certificate is {{seen}}, not {{pin}} ({{pin_file}})"
            else:
                tls.sendall(b"GET /healthz HTTP/1.0\\r\\nHost: gpustack-agent\\r\\n\\r\\n")
                status = tls.recv(64).split(b"\\r\\n", 1)[0]
                if status.split()[1:2] == [b"200"]:
                    break
                last = status.decode(errors="replace")
    except (OSError, ValueError) as error:
        last = str(error)
    if time.monotonic() > deadline:
        print(f"gpustack-agent: {{last}}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
EOF"""
