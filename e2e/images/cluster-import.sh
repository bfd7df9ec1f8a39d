#!/bin/bash
# Import into a running single-node cluster the archives of IMAGES_DIR written since the
# last import into that cluster (or since it started: `cluster.py up --images` imported
# the older ones). STATE_DIR/images.imported records the last import; `make cluster-down`
# removes it with the rest of the cluster's state.
#
#   cluster-import.sh STATE_DIR IMAGES_DIR
set -euo pipefail
state_dir=$1 images_dir=$2
[ -f "$state_dir/state.json" ] || exit 0
stamp=$state_dir/images.imported
since=$stamp
[ -f "$since" ] || since=$state_dir/state.json
mapfile -t archives < <(find "$images_dir" -maxdepth 1 -name '*.tar' -newer "$since" | sort)
if [ ${#archives[@]} -eq 0 ]; then
  echo "cluster in $state_dir: every image archive already imported"
  exit 0
fi
start=$(date +%s%N)
python3 "$(dirname "$0")/../cluster/cluster.py" import --state-dir "$state_dir" "${archives[@]}"
touch "$stamp"
echo "imported ${#archives[@]} archive(s) in $(( ($(date +%s%N) - start) / 1000000 )) ms"
