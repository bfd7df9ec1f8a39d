#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# The local base image (default localhost/debian:bookworm): debootstrap --variant=minbase
# from the mirror this machine's apt uses, imported with podman. No registry is involved.
#
#   base.sh IMAGE ARCHIVE_DIR
#
# The image is cached as ARCHIVE_DIR/debian-bookworm-minbase-<hash of this script>.tar
# (oci-archive). With the archive present this only loads it into the store when the
# store lacks the image; a stale base is refreshed by deleting that file (or
# `make images-clean`). Editing this script changes the hash, so the base is rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$1 archive_dir=$2
suite=bookworm
# shellcheck source=containers-env.sh
source "$here/containers-env.sh"
trap containers_env_cleanup EXIT

key=$(sha256sum "$here/base.sh" | cut -c1-12)
archive=$archive_dir/debian-$suite-minbase-$key.tar

if [ -f "$archive" ]; then
  podman image exists "$image" || podman load -q -i "$archive" >/dev/null
  exit 0
fi

work=$(mktemp -d "$TMPDIR/base.XXXXXX")
trap 'rm -rf "$work"; containers_env_cleanup' EXIT
rootfs=$work/rootfs
apt_sources() { python3 "$here/apt_sources.py" "$@"; }
mirror=$(apt_sources uri "$suite")
security=$(apt_sources uri "$suite-security")
keyring=$(apt_sources keyring "$suite")
keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}

echo "debootstrap --variant=minbase $suite from $mirror"
start=$(date +%s)
debootstrap --variant=minbase --keyring="$keyring" "$suite" "$rootfs" "$mirror" \
  > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }

# apt inside builds: the same mirrors, with the updates and security suites, no
# recommends; dpkg leaves out documentation (smaller layers in every image).
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOC
rm -f "$rootfs/etc/apt/sources.list"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  > "$rootfs/etc/apt/apt.conf.d/90csi-driver-no-recommends"
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/90csi-driver-no-docs" <<EOC
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EOC
# Host-specific or throw-away state out of the image.
: > "$rootfs/etc/resolv.conf"
echo localhost > "$rootfs/etc/hostname"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* "${rootfs:?}"/dev/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
# What the dpkg excludes above leave out of later installs, out of the base too.
find "$rootfs/usr/share/doc" ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
echo "debootstrap took $(( $(date +%s) - start ))s"

tar -C "$rootfs" --numeric-owner -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
mkdir -p "$archive_dir"
rm -f "$archive_dir/debian-$suite-minbase-"*.tar
podman save -q --format oci-archive -o "$archive.part" "$image"
mv "$archive.part" "$archive"
echo "$image: $(du -h "$archive" | cut -f1) archive in $(( $(date +%s) - start ))s"
