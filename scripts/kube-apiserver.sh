#!/usr/bin/env bash
# Provides a real `kube-apiserver` and `etcd` for the tests and CI (tests/test_k8s_apiserver_apply.py applies the
# Kubernetes pool's rendered objects to them; no kubelet, scheduler or controller manager is involved).
#
# Prints ONE line on stdout: the directory holding `kube-apiserver` and `etcd`, so callers can
#     export GPUSTACK_KUBE_BIN="$(bash scripts/kube-apiserver.sh)"
# Progress goes to stderr.
#
# 1. Both already on PATH in one directory (and GPUSTACK_KUBE_FORCE_BUILD is not 1): print that directory.
# 2. Else, once per pinned version, build them from Go modules into the cache (a second run only checks the files):
#    - kube-apiserver from k8s.io/kubernetes (main package cmd/kube-apiserver). Its go.mod replaces every k8s.io/*
#      staging module with a local path, so `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.x` is refused; we
#      generate a small Go module of our own that requires k8s.io/kubernetes at KUBE_VERSION and each staging
#      module at the matching v0.x version (those the proxy serves), and repeats the non-local `replace`
#      directives of k8s.io/kubernetes' go.mod;
#    - etcd from go.etcd.io/etcd/server/v3 (main package at the module root) at ETCD_VERSION, through a second
#      generated module (k8s.io/kubernetes requires a newer etcd server module, which would win in a shared
#      module) that requires server/v3 and its sibling modules (api, client/pkg, client/v3, pkg), which
#      server/v3's go.mod replaces with local paths, at the same version.
#    Both are static (CGO_ENABLED=0), built with -trimpath -ldflags "-s -w".
#
# Environment:
#   GPUSTACK_KUBE_VERSION     pinned k8s.io/kubernetes release (default below)
#   GPUSTACK_ETCD_VERSION     pinned etcd release (default below)
#   GPUSTACK_PULUMI_CACHE     cache root (default ~/.cache/gpustack-pulumi); binaries in $CACHE/kube-<v>/bin,
#                             GOMODCACHE and GOCACHE under $CACHE/go (shared with scripts/pulumi-cli.sh)
#   GPUSTACK_KUBE_FORCE_BUILD=1  ignore binaries on PATH and use/build the cached ones
#   GPUSTACK_KUBE_BUILD_PROVIDER=1  also try pulumi-resource-kubernetes at GPUSTACK_PULUMI_KUBERNETES_VERSION (see
#                             below why it fails here; a failure is reported and does not fail this script)
#   GO                        the go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

VERSION="${GPUSTACK_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${GPUSTACK_ETCD_VERSION:-v3.6.17}"
PULUMI_KUBERNETES_VERSION="${GPUSTACK_PULUMI_KUBERNETES_VERSION:-v4.34.2}"  # the pulumi_kubernetes package's
CACHE="${GPUSTACK_PULUMI_CACHE:-$HOME/.cache/gpustack-pulumi}"

log() { echo "kube-apiserver: $*" >&2; }

if [ "${GPUSTACK_KUBE_FORCE_BUILD:-0}" != "1" ] && command -v kube-apiserver >/dev/null 2>&1 \
    && command -v etcd >/dev/null 2>&1 \
    && [ "$(dirname "$(command -v kube-apiserver)")" = "$(dirname "$(command -v etcd)")" ]; then
    log "using $(command -v kube-apiserver) and etcd from PATH"
    dirname "$(command -v kube-apiserver)"
    exit 0
fi

ROOT="$CACHE/kube-$VERSION"
BIN="$ROOT/bin"
mkdir -p "$BIN"

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$GO" ] && ! command -v "$GO" >/dev/null 2>&1; then
    log "no Go toolchain (set GO=/path/to/go); cannot build kube-apiserver and etcd"
    exit 1
fi
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0

# Prints `replace` lines for the non-local replace directives of the go.mod file $1 (single or block form).
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

# Prints the module paths that the go.mod file $1 both requires and replaces with local paths (the sibling
# modules of one repository; a local replace of a module it does not require, e.g. etcd's
# `go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY`, is a guard, not a dependency).
local_replaced() {
    awk '
        /^require[ \t]*\(/ { req = 1; next }
        req && /^\)/ { req = 0; next }
        req { required[$1] = 1; next }
        /^require[ \t]/ { required[$2] = 1; next }
        /^replace[ \t]*\(/ { rep = 1; next }
        rep && /^\)/ { rep = 0; next }
        rep && $2 == "=>" && $3 ~ /^\.\.?\// { replaced[$1] = 1; next }
        /^replace[ \t]/ && $3 == "=>" && $4 ~ /^\.\.?\// { replaced[$2] = 1 }
        END { for (m in replaced) if (m in required) print m }
    ' "$1" | sort
}

# --- kube-apiserver -------------------------------------------------------------------------------------------
if [ ! -x "$BIN/kube-apiserver" ]; then
    start=$(date +%s)
    log "building kube-apiserver $VERSION (first run only; GOMODCACHE=$GOMODCACHE)"
    mod="$ROOT/module"
    mkdir -p "$mod"
    cd "$mod"
    minor="${VERSION#v1.}"  # 37.2 for v1.37.2: the staging modules are tagged v0.37.2
    staging="v0.$minor"
    printf '// Generated by gpustack-pulumi scripts/kube-apiserver.sh: builds kube-apiserver %s for tests and CI.\n' \
        "$VERSION" > go.mod
    printf 'module gpustack.local/kube-apiserver\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n' "$VERSION" >> go.mod
    rm -f go.sum
    "$GO" mod download -json "k8s.io/kubernetes@$VERSION" >/dev/null
    upstream="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$VERSION.mod"
    # Every staging module that the proxy serves at the matching version (a few, e.g. sample-*, may not be needed
    # or published; requiring an unpublished version would fail the whole module).
    for path in $(local_replaced "$upstream"); do
        if "$GO" list -m "$path@$staging" >/dev/null 2>&1; then
            echo "require $path $staging" >> go.mod
        else
            log "skipping $path@$staging (not served by the module proxy)"
        fi
    done
    repeat_replaces "$upstream" >> go.mod
    cat > tools.go <<'EOF'
//go:build tools

// Package tools pins kube-apiserver's main package as a dependency of this generated module.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
EOF
    "$GO" mod tidy >&2
    pkg=k8s.io/component-base/version
    major="${VERSION#v}"; major="${major%%.*}"
    kminor="${minor%%.*}"
    "$GO" build -trimpath -ldflags "-s -w -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor \
        -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z" \
        -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
    mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    log "built kube-apiserver in $(( $(date +%s) - start ))s"
fi

# --- etcd -----------------------------------------------------------------------------------------------------
stamp="$BIN/.etcd-version"
if [ ! -x "$BIN/etcd" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$ETCD_VERSION" ]; then
    start=$(date +%s)
    log "building etcd $ETCD_VERSION"
    mod="$ROOT/etcd-module"
    mkdir -p "$mod"
    cd "$mod"
    printf '// Generated by gpustack-pulumi scripts/kube-apiserver.sh: builds etcd %s for tests and CI.\n' \
        "$ETCD_VERSION" > go.mod
    printf 'module gpustack.local/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >> go.mod
    rm -f go.sum
    "$GO" mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    upstream="$GOMODCACHE/cache/download/go.etcd.io/etcd/server/v3/@v/$ETCD_VERSION.mod"
    for path in $(local_replaced "$upstream"); do
        echo "require $path $ETCD_VERSION" >> go.mod
    done
    repeat_replaces "$upstream" >> go.mod
    cat > tools.go <<'EOF'
//go:build tools

// Package tools pins etcd's main package as a dependency of this generated module.
package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
    "$GO" mod tidy >&2
    "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    echo "$ETCD_VERSION" > "$stamp"
    log "built etcd in $(( $(date +%s) - start ))s"
fi

# --- pulumi-resource-kubernetes (optional) --------------------------------------------------------------------
# pulumi-kubernetes' provider module (github.com/pulumi/pulumi-kubernetes/provider/v4, main package
# cmd/pulumi-resource-kubernetes) at the version of the pulumi_kubernetes Python package. Two obstacles: the module
# proxy these machines reach refuses every tagged provider/v4 version (403 "This module version is not
# available"; it serves one untagged pseudo-version), and the main package embeds schema-embed.json and
# terraform-mapping-embed.json, which upstream's `go generate` writes next to schema.json at build time and which
# the module zip lacks. When the download works, this step copies the module out of the read-only module cache,
# writes those two files itself (the schema with its version set, both minified) and builds against the copy.
# A failure is reported and does not fail this script.
if [ "${GPUSTACK_KUBE_BUILD_PROVIDER:-0}" = "1" ] && [ ! -x "$BIN/pulumi-resource-kubernetes" ]; then
    pkv="$PULUMI_KUBERNETES_VERSION"
    provider="github.com/pulumi/pulumi-kubernetes/provider/v4"
    pk="$ROOT/pulumi-kubernetes"
    rm -rf "$pk"
    mkdir -p "$pk"
    cd "$pk"
    printf '// Generated by gpustack-pulumi scripts/kube-apiserver.sh.\nmodule gpustack.local/pulumi-resource-kubernetes\n\ngo 1.26\n' \
        > go.mod
    if "$GO" mod download -json "$provider@$pkv" > download.json 2>&1 && ! grep -q '"Error"' download.json; then
        start=$(date +%s)
        upstream="$GOMODCACHE/cache/download/$provider/@v/$pkv.mod"
        sdk="$(awk '$1 == "github.com/pulumi/pulumi-kubernetes/sdk/v4" && $2 ~ /^v/ { print $2; exit }' "$upstream")"
        cp -r "$GOMODCACHE/$provider@$pkv" provider
        chmod -R u+w provider
        python3 - "provider/cmd/pulumi-resource-kubernetes" "${pkv#v}" <<'EOF'
import json, sys
where, version = sys.argv[1], sys.argv[2]
schema = json.load(open(f"{where}/schema.json"))
schema["version"] = version
json.dump(schema, open(f"{where}/schema-embed.json", "w"), separators=(",", ":"))
mapping = json.load(open(f"{where}/terraform-mapping.json"))
json.dump(mapping, open(f"{where}/terraform-mapping-embed.json", "w"), separators=(",", ":"))
EOF
        {
            echo "require $provider $pkv"
            [ -n "$sdk" ] && echo "require github.com/pulumi/pulumi-kubernetes/sdk/v4 $sdk"
            echo "replace $provider => ./provider"
            repeat_replaces "$upstream"
        } >> go.mod
        printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/pulumi-resource-kubernetes"\n' "$provider" > tools.go
        if "$GO" mod tidy >&2 && "$GO" build -trimpath \
                -ldflags "-s -w -X $provider/pkg/version.Version=${pkv#v}" \
                -o "$BIN/pulumi-resource-kubernetes" "$provider/cmd/pulumi-resource-kubernetes" >&2; then
            log "built pulumi-resource-kubernetes $pkv in $(( $(date +%s) - start ))s"
        else
            log "cannot build pulumi-resource-kubernetes $pkv (see the go output above)"
        fi
    else
        log "cannot build pulumi-resource-kubernetes $pkv: $(tr '\n' ' ' < download.json)"
    fi
fi

echo "$BIN"
