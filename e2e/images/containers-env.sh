# shellcheck shell=bash
# Sourced by the image scripts: podman, buildah and skopeo use a private containers
# storage and private configuration under $CONTAINERS_HOME, so the machine's
# /etc/containers and /var/lib/containers are never read for images nor written.
#   CONTAINERS_HOME  default ~/.cache/csi-driver/containers (layers cached across builds)

CONTAINERS_HOME=${CONTAINERS_HOME:-$HOME/.cache/csi-driver/containers}
mkdir -p "$CONTAINERS_HOME"/{conf,storage,run,tmp,netconf}

# overlay is native on this kernel (no fuse-overlayfs) and much smaller than vfs.
cat > "$CONTAINERS_HOME/conf/storage.conf" <<EOC
[storage]
driver = "overlay"
graphroot = "$CONTAINERS_HOME/storage"
runroot = "$CONTAINERS_HOME/run"
EOC
# runc, not crun: crun 1.8 refuses cgroup "hybrid" hosts (v1 controllers + an empty
# cgroup2 mount). Explicit ulimits: root here lacks CAP_SYS_RESOURCE, so podman's
# default nofile/nproc limits (above the hard limit) cannot be set.
cat > "$CONTAINERS_HOME/conf/containers.conf" <<EOC
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$CONTAINERS_HOME/tmp"
[network]
network_config_dir = "$CONTAINERS_HOME/netconf"
EOC
# No search registries: an unqualified name can never be looked up remotely.
printf 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n' \
  > "$CONTAINERS_HOME/conf/registries.conf"

export CONTAINERS_STORAGE_CONF=$CONTAINERS_HOME/conf/storage.conf
export CONTAINERS_CONF=$CONTAINERS_HOME/conf/containers.conf
export CONTAINERS_REGISTRIES_CONF=$CONTAINERS_HOME/conf/registries.conf
export TMPDIR=$CONTAINERS_HOME/tmp

# As root, containers/image always opens /var/lib/containers/cache/blob-info-cache-v1.boltdb
# (no setting moves it). Remove it on exit unless it was there before we started.
_blob_cache=/var/lib/containers/cache/blob-info-cache-v1.boltdb
if [ -e "$_blob_cache" ]; then _blob_cache_ours=""; else _blob_cache_ours=1; fi
containers_env_cleanup() {
  if [ -n "$_blob_cache_ours" ] && [ -e "$_blob_cache" ]; then
    rm -f "$_blob_cache"
    rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null || true
  fi
}
