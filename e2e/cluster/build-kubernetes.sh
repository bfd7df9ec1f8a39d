#!/bin/bash
# Builds the Kubernetes binaries the tests run (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl) from the Go module proxy, at one pinned release.
#
# Usage: build-kubernetes.sh <version> <dir>     e.g. v1.37.2 ~/.cache/csi-driver/kubernetes-v1.37.2
#   <dir>/bin   the binaries (each reports <version>)
#   <dir>/wrap  the generated wrapper module
#
# `go install k8s.io/kubernetes/cmd/...@<version>` is refused: kubernetes' go.mod has
# replace directives (its staging modules point at ./staging/src/...). A wrapper module
# that requires k8s.io/kubernetes and pins every staging module to its published
# v0.<minor>.<patch> tag builds the same commands.
#
# Nothing is done when every binary already runs and reports <version>. Binaries are
# built into a temporary directory next to bin/ and moved into place one by one, so an
# interrupted build never leaves a partial binary under its real name.
# Go's caches come from the environment (the Makefile sets GOMODCACHE/GOCACHE).
set -euo pipefail
# shellcheck source=/dev/null
source "$(dirname "$0")/../tools/go-wrapper.sh"

version=${1:?usage: build-kubernetes.sh <version> <dir>}
dir=${2:?usage: build-kubernetes.sh <version> <dir>}
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
bin=$dir/bin
wrap=$dir/wrap

# Prints the version a binary reports, or nothing.
reported_version() {
    local exe=$bin/$1
    [ -x "$exe" ] || return 0
    if [ "$1" = kubectl ]; then
        "$exe" version --client 2>/dev/null | sed -n 's/^Client Version: //p'
    else
        "$exe" --version 2>/dev/null | sed -n 's/^Kubernetes //p'
    fi
}

todo=()
for c in "${cmds[@]}"; do
    [ "$(reported_version "$c")" = "$version" ] || todo+=("$c")
done
if [ ${#todo[@]} -eq 0 ]; then
    echo "kubernetes $version binaries are up to date in $bin"
    exit 0
fi
echo "building kubernetes $version: ${todo[*]} (10-20 minutes with a cold Go build cache, seconds with a warm one)"

# --- the wrapper module -------------------------------------------------------------
minor=$(echo "$version" | cut -d. -f2)
tools=()
for c in "${cmds[@]}"; do tools+=("k8s.io/kubernetes/cmd/$c"); done
kubernetes_wrapper "$wrap" "$version" "${tools[@]}"
mkdir -p "$bin"

# --- the build ------------------------------------------------------------------------
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
tmp=$(mktemp -d "$dir/bin.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pkgs=()
for c in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
start=$(date +%s)
(cd "$wrap" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
for c in "${todo[@]}"; do mv -f "$tmp/$c" "$bin/$c"; done
for c in "${todo[@]}"; do
    got=$(reported_version "$c")
    [ "$got" = "$version" ] || { echo "build-kubernetes: $bin/$c reports '$got', not $version" >&2; exit 1; }
done
echo "built ${todo[*]} in $(($(date +%s) - start)) s into $bin"
