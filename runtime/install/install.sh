#!/usr/bin/env bash
# Install, upgrade or repair the gpustack-agent node agent on this host.
#
#   openssl rand -hex 32 | sudo ./install.sh --token-stdin --source ./gpustack_runtime-0.1.0-py3-none-any.whl
#
# What it does, each step only when something differs from what is there (so a second run changes nothing):
#   1. a virtualenv for the agent alone (default /opt/gpustack-agent/venv);
#   2. pip installs the agent from --source (a wheel, an sdist, a source directory or a pip requirement)
#      when the version there differs from the one the source holds: a new version upgrades in place;
#   3. the bearer token, from stdin or a file, into a root-only file (default /etc/gpustack-agent/token,
#      mode 0600); it is never printed and never put on a command line;
#      the agent's TLS certificate (default /etc/gpustack-agent/tls: self-signed ECDSA P-256, key 0600), made
#      by `gpustack-agent tls init` on the first run and kept on every later run and upgrade, so a client's pin
#      stays valid; its SHA-256 fingerprint is printed on every run as one machine-readable line,
#          GPUSTACK_AGENT_FINGERPRINT=sha256:<64 hex digits>
#      which clients pin (the SSH node pool reads it from this script's output);
#   4. the systemd unit gpustack-agent.service with the agent's flags (its template is render_unit below,
#      kept in this file so the script works alone, e.g. as cloud-init user data or piped to `bash -s` over
#      ssh (then stdin carries the script: give the token with --token-file);
#      --print-unit shows the unit without installing anything);
#   5. if systemd runs (and --no-systemd is not given): daemon-reload, enable, and start, or restart when
#      the package, the token or the unit changed.
# The last line says what happened: "gpustack-agent: nothing changed" on a repeated run.
#
# The agent serves HTTPS only (--tls-dir); the API's bearer token runs commands as root, so it never crosses the
# network in clear text. It listens on --host: give the address clients reach it at (the SSH node pool passes the
# host's address); the default 0.0.0.0 serves every interface, still over TLS.
#
# Every option also reads an environment variable (GPUSTACK_AGENT_<NAME>, e.g. GPUSTACK_AGENT_PREFIX); a flag
# wins over the variable. Run with --help for the list.
set -euo pipefail
umask 077

PROGRAM=gpustack-agent
UNIT_NAME=gpustack-agent.service
DISTRIBUTION=gpustack-runtime
MIN_PYTHON="3.11"

PREFIX=${GPUSTACK_AGENT_PREFIX:-/opt/gpustack-agent}
VENV=${GPUSTACK_AGENT_VENV:-}
CONFIG_DIR=${GPUSTACK_AGENT_CONFIG_DIR:-/etc/gpustack-agent}
TOKEN_PATH=${GPUSTACK_AGENT_TOKEN_PATH:-}
TLS_DIR=${GPUSTACK_AGENT_TLS_DIR:-}
STATE_DIR=${GPUSTACK_AGENT_STATE_DIR:-/var/lib/gpustack-agent}
UNIT_DIR=${GPUSTACK_AGENT_UNIT_DIR:-/etc/systemd/system}
SOURCE=${GPUSTACK_AGENT_SOURCE:-$DISTRIBUTION}
PYTHON=${GPUSTACK_AGENT_PYTHON:-python3}
HOST=${GPUSTACK_AGENT_HOST:-0.0.0.0}
PORT=${GPUSTACK_AGENT_PORT:-10150}
DEVICES=${GPUSTACK_AGENT_DEVICES:-auto}
PORT_RANGE=${GPUSTACK_AGENT_PORT_RANGE:-40000-40063}
LABELS=${GPUSTACK_AGENT_LABELS:-}
NODE_NAME=${GPUSTACK_AGENT_NODE_NAME:-}
MARGIN_MIB=${GPUSTACK_AGENT_MEMORY_SAFETY_MARGIN_MIB:-}
TOKEN_FROM=${GPUSTACK_AGENT_TOKEN_FROM:-}
SYSTEMD=${GPUSTACK_AGENT_SYSTEMD:-auto}
PIP_ARGS=()
PRINT_UNIT=no

usage() {
    cat <<EOF
Usage: install.sh [options]

Source and places:
  --source SPEC        wheel, sdist, source directory or pip requirement (default: $DISTRIBUTION)
  --prefix DIR         install root; the venv goes to DIR/venv (default: /opt/gpustack-agent)
  --venv DIR           the agent's virtualenv (default: PREFIX/venv)
  --python PATH        Python >= $MIN_PYTHON that creates the venv (default: python3)
  --pip-arg ARG        pass ARG to pip install (repeatable), e.g. --pip-arg=--no-index
  --config-dir DIR     holds the token file (default: /etc/gpustack-agent)
  --token-path FILE    where the token is written (default: CONFIG_DIR/token)
  --tls-dir DIR        the agent's TLS certificate, key and fingerprint (default: CONFIG_DIR/tls); an existing
                       certificate there is kept
  --state-dir DIR      the agent's --state-dir (default: /var/lib/gpustack-agent)
  --unit-dir DIR       where $UNIT_NAME is written (default: /etc/systemd/system)

Token (required on the first install; later runs keep the existing one):
  --token-stdin        read the token from standard input
  --token-file FILE    read the token from FILE

Agent flags written into the unit:
  --host ADDR (the address to listen on, over HTTPS; default 0.0.0.0)   --port N (default 10150)   --devices nvml|ascend|none|auto (default auto)
  --port-range LOW-HIGH (default 40000-40063)   --labels k=v,...   --node-name NAME
  --memory-safety-margin-mib N

systemd:
  --no-systemd         write the unit file but never call systemctl (containers, tests)
  --print-unit         print the unit these flags give and exit (installs nothing, needs no token)
  -h, --help           this text
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 2
}

say() {
    echo "$PROGRAM: $*"
}

# --- arguments ------------------------------------------------------------------------------------------

need_value() {
    # $1 flag, $2 number of remaining args
    [[ $2 -ge 2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    arg=$1
    value=""
    if [[ $arg == --*=* ]]; then
        value=${arg#*=}
        arg=${arg%%=*}
        set -- "$arg" "$value" "${@:2}"
    fi
    case $arg in
        --source) need_value "$arg" $#; SOURCE=$2; shift 2 ;;
        --prefix) need_value "$arg" $#; PREFIX=$2; shift 2 ;;
        --venv) need_value "$arg" $#; VENV=$2; shift 2 ;;
        --python) need_value "$arg" $#; PYTHON=$2; shift 2 ;;
        --pip-arg) need_value "$arg" $#; PIP_ARGS+=("$2"); shift 2 ;;
        --config-dir) need_value "$arg" $#; CONFIG_DIR=$2; shift 2 ;;
        --token-path) need_value "$arg" $#; TOKEN_PATH=$2; shift 2 ;;
        --tls-dir) need_value "$arg" $#; TLS_DIR=$2; shift 2 ;;
        --state-dir) need_value "$arg" $#; STATE_DIR=$2; shift 2 ;;
        --unit-dir) need_value "$arg" $#; UNIT_DIR=$2; shift 2 ;;
        --token-stdin) TOKEN_FROM=-; shift ;;
        --token-file) need_value "$arg" $#; TOKEN_FROM=$2; shift 2 ;;
        --host) need_value "$arg" $#; HOST=$2; shift 2 ;;
        --port) need_value "$arg" $#; PORT=$2; shift 2 ;;
        --devices) need_value "$arg" $#; DEVICES=$2; shift 2 ;;
        --port-range) need_value "$arg" $#; PORT_RANGE=$2; shift 2 ;;
        --labels) need_value "$arg" $#; LABELS=$2; shift 2 ;;
        --node-name) need_value "$arg" $#; NODE_NAME=$2; shift 2 ;;
        --memory-safety-margin-mib) need_value "$arg" $#; MARGIN_MIB=$2; shift 2 ;;
        --no-systemd) SYSTEMD=no; shift ;;
        --print-unit) PRINT_UNIT=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $arg (see --help)" ;;
    esac
done

VENV=${VENV:-$PREFIX/venv}
TOKEN_PATH=${TOKEN_PATH:-$CONFIG_DIR/token}
TLS_DIR=${TLS_DIR:-$CONFIG_DIR/tls}

# Values go into the unit's ExecStart line. systemd gives '%', '$', quotes, backslashes and spaces special
# meaning there, so only plain characters are accepted: nothing needs escaping, nothing can inject.
SAFE_VALUE='^[A-Za-z0-9_.,:=/@+-]*$'
for pair in "--host:$HOST" "--port:$PORT" "--devices:$DEVICES" "--port-range:$PORT_RANGE" \
    "--labels:$LABELS" "--node-name:$NODE_NAME" "--memory-safety-margin-mib:$MARGIN_MIB" \
    "--venv:$VENV" "--token-path:$TOKEN_PATH" "--tls-dir:$TLS_DIR" "--state-dir:$STATE_DIR"; do
    flag=${pair%%:*}
    value=${pair#*:}
    [[ $value =~ $SAFE_VALUE ]] || die "$flag '$value' may only contain letters, digits and _.,:=/@+-"
done
[[ $PORT =~ ^[0-9]+$ && $PORT -ge 1 && $PORT -le 65535 ]] || die "--port '$PORT' must be 1-65535"
[[ $DEVICES =~ ^(nvml|ascend|none|auto)$ ]] || die "--devices '$DEVICES' must be nvml, ascend, none or auto"
[[ $PORT_RANGE =~ ^[0-9]+-[0-9]+$ ]] || die "--port-range '$PORT_RANGE' must be LOW-HIGH, e.g. 40000-40063"
[[ -z $MARGIN_MIB || $MARGIN_MIB =~ ^[0-9]+$ ]] || die "--memory-safety-margin-mib '$MARGIN_MIB' must be >= 0"
[[ $VENV == /* && $TOKEN_PATH == /* && $TLS_DIR == /* && $STATE_DIR == /* && $UNIT_DIR == /* ]] ||
    die "--venv, --token-path, --tls-dir, --state-dir and --unit-dir must be absolute paths"
[[ -n $HOST ]] || die "--host '' must be an address to listen on"

# --- the unit, rendered from the flags -------------------------------------------------------------------

exec_start="$VENV/bin/$PROGRAM --host $HOST --port $PORT --token-file $TOKEN_PATH --tls-dir $TLS_DIR"
exec_start+=" --state-dir $STATE_DIR"
exec_start+=" --devices $DEVICES --port-range $PORT_RANGE"
[[ -n $LABELS ]] && exec_start+=" --labels $LABELS"
[[ -n $NODE_NAME ]] && exec_start+=" --node-name $NODE_NAME"
[[ -n $MARGIN_MIB ]] && exec_start+=" --memory-safety-margin-mib $MARGIN_MIB"

render_unit() {
    cat <<EOF
# Written by gpustack-agent's install.sh; running it again rewrites this file.
[Unit]
Description=gpustack-pulumi node agent (GPU capacity, reservations, inference engine supervision)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=$exec_start
Restart=always
RestartSec=5
# KillMode=process: stopping or restarting the unit signals only the agent. The engines it started stay in
# this unit's cgroup, and with the default (control-group) systemd would kill them together with the agent:
# every agent upgrade or crash would take the served models down. A new agent adopts the running engines;
# engines stop through the agent's API (DELETE /v1/instances/{id}) or uninstall.sh.
KillMode=process
# The agent's own graceful shutdown is bounded at a few seconds; this only covers a hung agent.
TimeoutStopSec=30
# Engine log files and client connections, one set per engine.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF
}

if [[ $PRINT_UNIT == yes ]]; then
    render_unit
    exit 0
fi

# The token is read and checked before anything is installed, so a missing token fails in a second.
token=""
if [[ -n $TOKEN_FROM ]]; then
    if [[ $TOKEN_FROM == - ]]; then
        IFS= read -r token || true
    else
        [[ -r $TOKEN_FROM ]] || die "--token-file '$TOKEN_FROM' is not readable"
        IFS= read -r token <"$TOKEN_FROM" || true
    fi
    token=${token%$'\r'}
    [[ -n $token ]] || die "the token is empty; pipe one in, e.g. 'openssl rand -hex 32 | install.sh --token-stdin'"
    [[ $token =~ ^[[:graph:]]+$ ]] || die "the token must be printable ASCII without whitespace"
elif [[ ! -s $TOKEN_PATH ]]; then
    die "no token at $TOKEN_PATH: pass --token-stdin (and pipe it in) or --token-file FILE"
fi

# --- 1. the virtualenv ----------------------------------------------------------------------------------

CHANGED=()

if [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || die "--python '$PYTHON' not found; install Python >= $MIN_PYTHON"
    "$PYTHON" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" ||
        die "--python '$PYTHON' is older than $MIN_PYTHON"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    CHANGED+=("venv created at $VENV")
fi
VENV_PYTHON=$VENV/bin/python

# --- 2. the package -------------------------------------------------------------------------------------

installed_version() {
    "$VENV_PYTHON" - "$DISTRIBUTION" 2>/dev/null <<'EOF' || true
import importlib.metadata, sys
try:
    print(importlib.metadata.version(sys.argv[1]))
except importlib.metadata.PackageNotFoundError:
    pass
EOF
}

# The version --source would install, or nothing when it cannot be known without installing (an unpinned
# requirement: then pip decides, and pip itself does nothing when the installed version satisfies it).
source_version() {
    local name
    if [[ -d $SOURCE ]]; then
        "$VENV_PYTHON" - "$SOURCE/pyproject.toml" 2>/dev/null <<'EOF' || true
import sys, tomllib
with open(sys.argv[1], "rb") as file:
    print(tomllib.load(file).get("project", {}).get("version", ""))
EOF
    elif [[ -f $SOURCE ]]; then
        name=$(basename "$SOURCE")
        case $name in
            *.whl) echo "$name" | cut -d- -f2 ;;  # name-version-python-abi-platform.whl (PEP 427)
            *.tar.gz) name=${name%.tar.gz}; echo "${name##*-}" ;;  # name-version.tar.gz (sdist)
            *.zip) name=${name%.zip}; echo "${name##*-}" ;;
        esac
    elif [[ $SOURCE == *==* ]]; then
        echo "${SOURCE##*==}"
    fi
}

# The distribution with its `agent` extra (the server, NVML and TLS dependencies; the core is the wire contract):
# PATH[agent] for a wheel, sdist or directory, NAME[agent]==VERSION for a requirement.
with_agent_extra() {
    local source=$1
    if [[ -e $source ]]; then
        echo "${source}[agent]"
    elif [[ $source == *==* ]]; then
        echo "${source%%==*}[agent]==${source##*==}"
    elif [[ $source != *"["* ]]; then
        echo "${source}[agent]"
    else
        echo "$source"
    fi
}

before=$(installed_version)
wanted=$(source_version)
if [[ -n $before && -n $wanted && $before == "$wanted" && -x $VENV/bin/$PROGRAM ]]; then
    say "package unchanged ($DISTRIBUTION $before)"
else
    [[ -e $SOURCE || $SOURCE != */* ]] || die "--source '$SOURCE' does not exist"
    # A local wheel or directory with the same version as the installed one would be skipped by pip.
    reinstall=()
    [[ -n $before && -z $wanted && -e $SOURCE ]] && reinstall=(--force-reinstall --no-deps)
    "$VENV_PYTHON" -m pip install --quiet --upgrade "${reinstall[@]}" "${PIP_ARGS[@]}" "$(with_agent_extra "$SOURCE")" ||
        die "pip could not install '$SOURCE' into $VENV (see pip's message above)"
    after=$(installed_version)
    [[ -n $after && -x $VENV/bin/$PROGRAM ]] || die "'$SOURCE' did not install $DISTRIBUTION with $PROGRAM"
    if [[ -z $before ]]; then
        CHANGED+=("package installed ($DISTRIBUTION $after)")
    elif [[ $before != "$after" ]]; then
        CHANGED+=("package upgraded ($DISTRIBUTION $before -> $after)")
    elif [[ ${#reinstall[@]} -gt 0 ]]; then
        CHANGED+=("package reinstalled ($DISTRIBUTION $after)")
    else
        say "package unchanged ($DISTRIBUTION $after)"
    fi
fi

# --- 3. the token ---------------------------------------------------------------------------------------

write_if_different() {
    # $1 target path, $2 mode, content on stdin. Prints "changed" when it wrote. Atomic: temp file + rename.
    local target=$1 mode=$2 temp
    temp=$(mktemp "$(dirname "$target")/.$(basename "$target").XXXXXX")
    cat >"$temp"
    chmod "$mode" "$temp"
    if [[ -f $target ]] && cmp -s "$temp" "$target" && [[ $(stat -c %a "$target") == "$mode" ]]; then
        rm -f "$temp"
    else
        mv -f "$temp" "$target"
        echo changed
    fi
}

mkdir -p "$(dirname "$TOKEN_PATH")"
chmod 700 "$(dirname "$TOKEN_PATH")"
if [[ -n $token ]]; then
    if [[ -n $(printf '%s\n' "$token" | write_if_different "$TOKEN_PATH" 600) ]]; then
        CHANGED+=("token written to $TOKEN_PATH")
    else
        say "token unchanged"
    fi
    unset token
else
    chmod 600 "$TOKEN_PATH"
    say "token unchanged (kept $TOKEN_PATH)"
fi

# --- 3b. the TLS certificate --------------------------------------------------------------------------------

# Made once and kept: a new certificate would break every client's pin. The agent's own command makes it (the
# `cryptography` package is one of its dependencies), so this needs nothing but the venv.
tls_names=(--name "$HOST")
[[ -n $NODE_NAME ]] && tls_names+=(--name "$NODE_NAME")
had_certificate=no
[[ -f $TLS_DIR/cert.pem ]] && had_certificate=yes
tls_report=$("$VENV/bin/$PROGRAM" tls init --dir "$TLS_DIR" "${tls_names[@]}" 2>&1) ||
    die "could not set up the TLS certificate in $TLS_DIR: $tls_report"
fingerprint=$(grep -E '^sha256:[0-9a-f]{64}$' <<<"$tls_report" | tail -n 1 || true)
[[ $fingerprint =~ ^sha256:[0-9a-f]{64}$ ]] || die "gpustack-agent tls init printed no fingerprint: $tls_report"
if [[ $had_certificate == no ]]; then
    CHANGED+=("TLS certificate created in $TLS_DIR")
else
    say "TLS certificate unchanged (kept $TLS_DIR)"
fi
echo "GPUSTACK_AGENT_FINGERPRINT=$fingerprint"

# --- 4. the systemd unit --------------------------------------------------------------------------------

mkdir -p "$STATE_DIR" "$UNIT_DIR"
chmod 700 "$STATE_DIR"

unit_changed=$(render_unit | write_if_different "$UNIT_DIR/$UNIT_NAME" 644)
if [[ -n $unit_changed ]]; then
    CHANGED+=("unit written to $UNIT_DIR/$UNIT_NAME")
else
    say "unit unchanged"
fi

# --- 5. systemd -----------------------------------------------------------------------------------------

if [[ $SYSTEMD == no ]]; then
    say "systemd skipped (--no-systemd); start the agent with: $exec_start"
elif [[ ! -d /run/systemd/system ]]; then
    say "systemd is not running here; start the agent with: $exec_start"
else
    [[ -n $unit_changed ]] && systemctl daemon-reload
    systemctl enable --quiet "$UNIT_NAME"
    if [[ ${#CHANGED[@]} -gt 0 ]]; then
        systemctl restart "$UNIT_NAME"
        say "service restarted"
    elif ! systemctl is-active --quiet "$UNIT_NAME"; then
        systemctl start "$UNIT_NAME"
        CHANGED+=("service started")
    fi
fi

if [[ ${#CHANGED[@]} -eq 0 ]]; then
    say "nothing changed"
else
    for change in "${CHANGED[@]}"; do
        say "$change"
    done
    say "done: ${#CHANGED[@]} change(s)"
fi
