#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# Export an image to an archive containerd can import, only when the image changed since
# the archive was written (ARCHIVE.id records the image ID), after checking it.
#
#   export.sh FORMAT IMAGE ARCHIVE --smoke          check = smoke.sh IMAGE
#   export.sh FORMAT IMAGE ARCHIVE [ARG...]         check = podman run --rm IMAGE ARG...
#
# FORMAT: docker-archive (uncompressed layers) or oci-archive (gzip layers).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
format=$1 image=$2 archive=$3
shift 3
# shellcheck source=containers-env.sh
source "$here/containers-env.sh"
trap 'rm -f "$archive.part"; containers_env_cleanup' EXIT

id=$(podman image inspect -f '{{.Id}}' "$image")
if [ -f "$archive" ] && [ "$(cat "$archive.id" 2>/dev/null)" = "$format $id" ]; then
  echo "$image: up to date ($archive)"
  exit 0
fi
if [ "${1:-}" = --smoke ]; then
  "$here/smoke.sh" "$image"
elif [ $# -gt 0 ]; then
  echo "$image: $(podman run --rm --network none "$image" "$@" 2>&1 | head -1)"
fi
start=$(date +%s%N)
mkdir -p "$(dirname "$archive")"
# docker-archive refuses to write over an existing file.
rm -f "$archive" "$archive.id" "$archive.part"
buildah push --quiet "$image" "$format:$archive.part:$image"
mv "$archive.part" "$archive"
echo "$format $id" > "$archive.id"
size=$(podman image inspect -f '{{.Size}}' "$image")
echo "$image: $(( size / 1000000 )) MB image, $(du -m "$archive" | cut -f1) MiB $format" \
  "in $(( ($(date +%s%N) - start) / 1000000 )) ms -> $archive"
