#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# Smoke test of the plugin image: the entrypoint answers --version, the node tools are
# there, and the plugin serves Identity.Probe in controller mode on an embedded-like
# configuration (FileDriver volumes, SQLite metadata, all under a tmpfs in the container),
# asked by `csi-driver call` inside the same container.
#
#   smoke.sh IMAGE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$1
# shellcheck source=containers-env.sh
source "$here/containers-env.sh"
work=$(mktemp -d "$TMPDIR/smoke.XXXXXX")
name=csi-driver-smoke-$$
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  podman rm -f -t 1 "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
  containers_env_cleanup
}
trap cleanup EXIT

cat > "$work/config.yaml" <<EOC
driver_name: csi-driver.cinder
storage:
  persistence_config: {storage: sqlite, path: /tmp/x/metadata.sqlite}
  file_locks_path: /tmp/x/locks
backends:
  - name: embedded
    driver: csi_driver.storage.drivers.file.FileDriver
    options:
      file_volumes_dir: /tmp/x/volumes
node:
  state_dir: /tmp/x/node
EOC

start=$(date +%s%N)
# No network needed: the client reaches the unix socket through `podman exec`.
podman run -d --name "$name" --network none --mount type=tmpfs,destination=/tmp/x \
  -v "$work/config.yaml:/etc/csi-driver/config.yaml:ro" "$image" \
  --endpoint unix:///tmp/x/csi.sock --mode controller --config /etc/csi-driver/config.yaml \
  >/dev/null

echo "$image: $(podman exec "$name" csi-driver --version)"
# What os-brick and the node code run (mount and losetup come with minbase's `mount`).
podman exec "$name" sh -c 'for t in iscsiadm nvme multipath multipathd lsscsi mkfs.ext4 \
    resize2fs mkfs.xfs xfs_growfs blkid blockdev mount umount losetup rbd ceph; do
    command -v "$t" >/dev/null || { echo "missing in the image: $t"; exit 1; }; done'

for _ in $(seq 120); do
  # The controller answers Probe as soon as it listens, not ready until its backend is up.
  if out=$(podman exec "$name" csi-driver call --timeout 5 --endpoint unix:///tmp/x/csi.sock probe 2>&1) \
      && [ "$(tr -d ' \n' <<<"$out")" != '{"ready":false}' ]; then
    echo "$image: probe $(tr -d ' \n' <<<"$out") $(( ($(date +%s%N) - start) / 1000000 )) ms after start"
    exit 0
  fi
  if [ "$(podman inspect -f '{{.State.Running}}' "$name")" != true ]; then break; fi
  sleep 0.5
done
echo "smoke.sh: $image did not answer Probe ready; last answer: $out" >&2
podman logs "$name" 2>&1 | tail -30 >&2
exit 1
