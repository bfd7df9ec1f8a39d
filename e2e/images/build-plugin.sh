#!/bin/bash
# shellcheck source-path=SCRIPTDIR
# Build the plugin image from the repository's Dockerfile with buildah, layers cached in
# the private containers storage (containers-env.sh).
#
#   build-plugin.sh IMAGE CONTEXT BASE_IMAGE [CONSTRAINTS]
#
# CONSTRAINTS: the pip constraints file in CONTEXT that picks the Cinder release
# (default constraints.txt, the newest; constraints-cinderNN.txt an older one).
#
# pip inside the build must trust the CA bundle the host's pip trusts (egress TLS may be
# re-signed by a local CA that Debian's ca-certificates lacks) and use the same index: both
# are read from the host's pip configuration now and handed over as build secrets.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$1 context=$2 base=$3 constraints=${4:-constraints.txt}
# shellcheck source=containers-env.sh
source "$here/containers-env.sh"
trap containers_env_cleanup EXIT

# Even fully cached, `buildah bud` takes ~13 s here (it hashes the 450 MB venv it copies).
# Skip it when nothing it reads changed: the base image, the Dockerfile, .dockerignore, this
# script and the contents of the files git sees under the paths .dockerignore admits (its
# `!PATH` lines; the generated stubs are git-ignored as they are docker-ignored).
fingerprint() {
  (
    cd "$context" && git rev-parse --is-inside-work-tree >/dev/null 2>&1 || exit 0
    paths=$(sed -n 's/^!//p' .dockerignore)
    {
      podman image inspect -f '{{.Id}}' "$base"
      echo "CONSTRAINTS=$constraints"
      sha256sum Dockerfile .dockerignore "$here/build-plugin.sh"
      # shellcheck disable=SC2086  # one path per word
      git ls-files -z -co --exclude-standard -- $paths | sort -z | xargs -0 sha256sum 2>&1 || true
    } | sha256sum | cut -d' ' -f1
  )
}
state=$CONTAINERS_HOME/build-plugin-$(tr /: __ <<<"$image").state
want=$(fingerprint)
have=$(podman image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
if [ -n "$want" ] && [ -n "$have" ] && [ "$(cat "$state" 2>/dev/null)" = "$image $have $want" ]; then
  echo "$image: up to date (no input changed since it was built)"
  exit 0
fi

secrets=$(mktemp -d "$TMPDIR/pip.XXXXXX")
trap 'rm -rf "$secrets"; containers_env_cleanup' EXIT

# `pip config get` misses values set by PIP_* variables: read `pip config list`, where
# those appear as ":env:.key" next to "global.key", "install.key"...
pip_config=$(python3 -m pip config list 2>/dev/null || true)
pip_value() {
  sed -n "s/^\(:env:\|global\|install\|download\)\.$1='\(.*\)'$/\2/p" <<<"$pip_config" | head -1
}
ca=$(pip_value cert)
ca=${ca:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$ca" ] || { echo "build-plugin.sh: CA bundle $ca (from the host's pip) not readable" >&2; exit 1; }
{
  echo "[global]"
  echo "cert = /run/secrets/pipca"
  echo "disable-pip-version-check = true"
  for key in index-url extra-index-url trusted-host timeout default-timeout; do
    value=$(pip_value "$key")
    if [ -n "$value" ]; then echo "$key = $value"; fi
  done
} > "$secrets/pip.conf"

log=$CONTAINERS_HOME/build-plugin.log
start=$(date +%s%N)
if ! buildah bud --layers --isolation chroot \
    --build-arg BASE="$base" --build-arg CONSTRAINTS="$constraints" \
    --secret id=pipconf,src="$secrets/pip.conf" --secret id=pipca,src="$ca" \
    -f "$context/Dockerfile" -t "$image" "$context" > "$log" 2>&1; then
  tail -40 "$log" >&2
  echo "build-plugin.sh: buildah bud failed, whole log: $log" >&2
  exit 1
fi
echo "$image $(podman image inspect -f '{{.Id}}' "$image") $want" > "$state"
echo "$image: built in $(( ($(date +%s%N) - start) / 1000000 )) ms" \
  "($(grep -c '^--> Using cache' "$log") cached steps, log: $log)"
