# Sourced by scripts/pulumi-cli.sh and scripts/kube-apiserver.sh (not run on its own): the Go toolchain and the
# pieces both use to build a Go program from modules through a small generated module of our own.
#
# Expects CACHE (the cache root) and a `log` function; sets GO and the Go environment: GOMODCACHE and GOCACHE
# under $CACHE/go (shared by both scripts, so a module downloaded for one is not fetched again), module mode,
# the local toolchain only, static binaries.

# Finds the go command (GO, else go on PATH, else /usr/local/go/bin/go) or exits 1 saying what cannot be built ($1).
use_go_toolchain() {
    GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
    if [ ! -x "$GO" ] && ! command -v "$GO" >/dev/null 2>&1; then
        log "no Go toolchain (set GO=/path/to/go); cannot build $1"
        exit 1
    fi
    export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    export CGO_ENABLED=0
}

# Prints `replace` lines for the non-local replace directives of the go.mod file $1 (single or block form): a
# module's own replaces do not apply when it is required by another module, so the generated module repeats them.
repeat_replaces() {
    awk '
        /^replace[ \t]*\(/ { block = 1; next }
        block && /^\)/ { block = 0; next }
        block { print; next }
        /^replace[ \t]/ { sub(/^replace[ \t]+/, ""); print }
    ' "$1" | while read -r line; do
        [ -n "$line" ] || continue
        case "$line" in //*) continue ;; esac
        target="$(echo "${line#*=>}" | sed 's/^ *//')"
        case "$target" in
            ./*|../*|/*) continue ;;
        esac
        log "repeating replace $line"
        echo "replace $line"
    done
}
