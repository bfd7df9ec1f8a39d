#!/bin/bash
# Builds Kubernetes' end-to-end test binary and what running it needs, at one pinned
# release, from the Go module proxy:
#   e2e.test  `go test -c k8s.io/kubernetes/test/e2e` (the storage suite lives in it)
#   ginkgo    the runner that spreads specs over parallel e2e.test processes
#   agnhost   the test images' multi-tool (k8s.io/kubernetes/test/images/agnhost)
#
# Usage: build-e2e-test.sh <version> <dir>     e.g. v1.37.2 ~/.cache/csi-driver/kubernetes-v1.37.2
#   <dir>/e2e-bin   the three binaries
#   <dir>/e2e-wrap  the generated wrapper module (see build-kubernetes.sh for why one)
#
# A no-op when e2e.test reports <version> and the others are there. Built into a
# temporary directory and moved into place, so an interrupted build leaves nothing
# half-written under a real name.
set -euo pipefail
# shellcheck source=/dev/null
source "$(dirname "$0")/../tools/go-wrapper.sh"

version=${1:?usage: build-e2e-test.sh <version> <dir>}
dir=${2:?usage: build-e2e-test.sh <version> <dir>}
bin=$dir/e2e-bin
wrap=$dir/e2e-wrap

e2e_version() {
    [ -x "$bin/e2e.test" ] || return 0
    # It prints the release alone ("v1.37.2").
    "$bin/e2e.test" --version 2>/dev/null | head -1 | awk '{print $NF}'
}
if [ "$(e2e_version)" = "$version" ] && [ -x "$bin/ginkgo" ] && [ -x "$bin/agnhost" ]; then
    echo "e2e.test $version, ginkgo and agnhost are up to date in $bin"
    exit 0
fi
echo "building e2e.test, ginkgo and agnhost at kubernetes $version (15-30 minutes with a cold Go build cache)"

minor=$(echo "$version" | cut -d. -f2)
# ginkgo at the version k8s.io/kubernetes requires (the tool block resolves it from there).
kubernetes_wrapper "$wrap" "$version" \
    k8s.io/kubernetes/test/images/agnhost github.com/onsi/ginkgo/v2/ginkgo

ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
mkdir -p "$bin"
tmp=$(mktemp -d "$dir/e2e-bin.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$wrap"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/test/images/agnhost github.com/onsi/ginkgo/v2/ginkgo
# The test package's own imports are not the tools': -mod=mod lets `go test` record
# their checksums (their versions come from k8s.io/kubernetes's requirements).
CGO_ENABLED=0 go test -c -mod=mod -trimpath -ldflags "$ldflags" -o "$tmp/e2e.test" \
    k8s.io/kubernetes/test/e2e
for c in e2e.test ginkgo agnhost; do mv -f "$tmp/$c" "$bin/$c"; done
got=$(e2e_version)
[ "$got" = "$version" ] || { echo "build-e2e-test: e2e.test reports '$got', not $version" >&2; exit 1; }
echo "built e2e.test, ginkgo and agnhost in $(($(date +%s) - start)) s into $bin"
