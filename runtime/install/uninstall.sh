#!/usr/bin/env bash
# Remove the gpustack-agent node agent that install.sh set up.
#
#   sudo ./uninstall.sh            stop the agent and its engines, remove the unit, the venv, the token and the
#                                  TLS certificate and key
#   sudo ./uninstall.sh --purge    also remove the state directory (reservations, instance state, engine logs)
#
# The engines keep running when only the agent stops (KillMode=process in the unit), so this script stops
# them itself, from the supervisor's state file, unless --keep-engines is given. Safe to run twice: whatever
# is already gone is skipped. Takes the same --prefix/--venv/--config-dir/--token-path/--tls-dir/--state-dir/
# --unit-dir options and GPUSTACK_AGENT_* variables as install.sh.
set -euo pipefail

PROGRAM=gpustack-agent
UNIT_NAME=gpustack-agent.service

PREFIX=${GPUSTACK_AGENT_PREFIX:-/opt/gpustack-agent}
VENV=${GPUSTACK_AGENT_VENV:-}
CONFIG_DIR=${GPUSTACK_AGENT_CONFIG_DIR:-/etc/gpustack-agent}
TOKEN_PATH=${GPUSTACK_AGENT_TOKEN_PATH:-}
TLS_DIR=${GPUSTACK_AGENT_TLS_DIR:-}
STATE_DIR=${GPUSTACK_AGENT_STATE_DIR:-/var/lib/gpustack-agent}
UNIT_DIR=${GPUSTACK_AGENT_UNIT_DIR:-/etc/systemd/system}
SYSTEMD=${GPUSTACK_AGENT_SYSTEMD:-auto}
PURGE=no
KEEP_ENGINES=no
ENGINE_STOP_GRACE_SECONDS=10

die() {
    echo "uninstall.sh: error: $*" >&2
    exit 2
}

say() {
    echo "$PROGRAM: $*"
}

while [[ $# -gt 0 ]]; do
    arg=$1
    if [[ $arg == --*=* ]]; then
        set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
        arg=$1
    fi
    case $arg in
        --prefix | --venv | --config-dir | --token-path | --tls-dir | --state-dir | --unit-dir)
            [[ $# -ge 2 ]] || die "$arg needs a value"
            case $arg in
                --prefix) PREFIX=$2 ;;
                --venv) VENV=$2 ;;
                --config-dir) CONFIG_DIR=$2 ;;
                --token-path) TOKEN_PATH=$2 ;;
                --tls-dir) TLS_DIR=$2 ;;
                --state-dir) STATE_DIR=$2 ;;
                --unit-dir) UNIT_DIR=$2 ;;
            esac
            shift 2
            ;;
        --purge) PURGE=yes; shift ;;
        --keep-engines) KEEP_ENGINES=yes; shift ;;
        --no-systemd) SYSTEMD=no; shift ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $arg (see --help)" ;;
    esac
done

VENV=${VENV:-$PREFIX/venv}
TOKEN_PATH=${TOKEN_PATH:-$CONFIG_DIR/token}
TLS_DIR=${TLS_DIR:-$CONFIG_DIR/tls}
for path in "$VENV" "$TOKEN_PATH" "$TLS_DIR" "$STATE_DIR" "$UNIT_DIR"; do
    [[ $path == /* && $path != / ]] || die "'$path' must be an absolute path other than /"
done

# 1. The agent: stop it first so it does not restart engines while they are being stopped.
if [[ $SYSTEMD != no && -d /run/systemd/system ]]; then
    if systemctl list-unit-files --quiet "$UNIT_NAME" >/dev/null 2>&1; then
        systemctl disable --now --quiet "$UNIT_NAME" 2>/dev/null || true
        say "service stopped and disabled"
    fi
fi

# 2. The engines, from the supervisor's state file: each process group is stopped only if its leader is
#    still the process the agent started (pid and start time match), never a reused pid.
if [[ $KEEP_ENGINES == no && -x $VENV/bin/python && -f $STATE_DIR/instances.json ]]; then
    "$VENV/bin/python" - "$STATE_DIR/instances.json" "$ENGINE_STOP_GRACE_SECONDS" <<'EOF'
import asyncio
import sys
from pathlib import Path

from gpustack_runtime.supervisor import procfs
from gpustack_runtime.supervisor.state import load_state


async def stop_all(state_path: Path, grace: float) -> None:
    for instance in load_state(state_path).instances:
        if instance.pid is not None and procfs.is_same_running_process(instance.pid, instance.pid_start_time):
            await procfs.terminate_group(instance.pid, instance.pid_start_time, grace)
            print(f"gpustack-agent: stopped engine {instance.id} (pid {instance.pid})")


asyncio.run(stop_all(Path(sys.argv[1]), float(sys.argv[2])))
EOF
fi

# 3. Files.
remove() {
    if [[ -e $1 ]]; then
        rm -rf -- "$1"
        say "removed $1"
    fi
}

if [[ -f $UNIT_DIR/$UNIT_NAME ]]; then
    remove "$UNIT_DIR/$UNIT_NAME"
    [[ $SYSTEMD != no && -d /run/systemd/system ]] && systemctl daemon-reload
fi
remove "$VENV"
[[ -d $PREFIX && -z $(ls -A "$PREFIX") ]] && rmdir "$PREFIX" && say "removed $PREFIX"
remove "$TOKEN_PATH"
# The private key goes with the agent: a later install makes a new certificate (and prints its new fingerprint).
remove "$TLS_DIR"
[[ -d $CONFIG_DIR && -z $(ls -A "$CONFIG_DIR") ]] && rmdir "$CONFIG_DIR" && say "removed $CONFIG_DIR"
if [[ $PURGE == yes ]]; then
    remove "$STATE_DIR"
elif [[ -d $STATE_DIR ]]; then
    say "kept $STATE_DIR (use --purge to remove it)"
fi
say "uninstalled"
