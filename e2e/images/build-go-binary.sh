#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# A FROM-scratch image holding one static Go binary (Containerfile.go-binary).
#
#   build-go-binary.sh IMAGE BINARY_PATH NAME
#
# NAME is the file name in the image (/NAME, run through /entrypoint). The binary must be
# static: the image has no dynamic loader (export.sh runs `IMAGE --version` to prove it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$1 binary=$2 name=$3
[ -x "$binary" ] || { echo "build-go-binary.sh: $binary: no such executable" >&2; exit 1; }
# shellcheck source=containers-env.sh
source "$here/containers-env.sh"
context=$(mktemp -d "$TMPDIR/go-binary.XXXXXX")
trap 'rm -rf "$context"; containers_env_cleanup' EXIT

# A hard link when the cache is on the same file system, else a copy.
ln "$binary" "$context/$name" 2>/dev/null || cp "$binary" "$context/$name"
mkdir "$context/links"
ln -s "$name" "$context/links/entrypoint"
start=$(date +%s%N)
buildah bud --layers --quiet --build-arg BINARY="$name" \
  -f "$here/Containerfile.go-binary" -t "$image" "$context" >/dev/null
echo "$image: built in $(( ($(date +%s%N) - start) / 1000000 )) ms"
