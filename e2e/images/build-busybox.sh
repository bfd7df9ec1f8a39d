#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# The test pods' userland: Debian's busybox-static, one symlink per applet at the path
# busybox lists for it, /etc/passwd and /etc/group, on an empty image.
#
#   build-busybox.sh IMAGE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$1
busybox=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/busybox$') \
  || { echo "build-busybox.sh: busybox-static is not installed ('make image-deps')" >&2; exit 1; }
# shellcheck source=containers-env.sh
source "$here/containers-env.sh"
context=$(mktemp -d "$TMPDIR/busybox.XXXXXX")
trap 'rm -rf "$context"; containers_env_cleanup' EXIT

root=$context/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var,dev,proc,sys}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ "$applet" = bin/busybox ] || ln -s /bin/busybox "$root/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
start=$(date +%s%N)
buildah bud --layers --quiet -f "$here/Containerfile.busybox" -t "$image" "$context" >/dev/null
echo "$image: built in $(( ($(date +%s%N) - start) / 1000000 )) ms"
