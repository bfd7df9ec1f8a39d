#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# Remove the private containers storage (every image and build cache layer) and the
# archives `make images` wrote; other files in IMAGES_DIR (the cluster's own) stay.
#
#   clean.sh IMAGES_DIR ARCHIVE_NAME...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
images_dir=$1
shift
if [ -d "${CONTAINERS_HOME:-$HOME/.cache/csi-driver/containers}" ]; then
  # shellcheck source=containers-env.sh
  source "$here/containers-env.sh"
  trap containers_env_cleanup EXIT
  podman rm -af -t 0 >/dev/null 2>&1 || true
  buildah rm -a >/dev/null 2>&1 || true
  # overlay mounts a crashed build may have left, deepest first
  { findmnt -rn -o TARGET | grep "^$CONTAINERS_HOME/" || true; } | sort -r | xargs -r -n1 umount -l
  rm -rf "$CONTAINERS_HOME"
  echo "removed $CONTAINERS_HOME"
fi
for name in "$@"; do rm -f "$images_dir/$name.tar" "$images_dir/$name.tar.id"; done
rm -rf "$images_dir/base"
echo "removed the archives of: $* and the base image"
