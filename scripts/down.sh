#!/usr/bin/env bash
# Undoes scripts/up.sh: `berth down` (stops `berth up`, removes every instance it started)
# and stops the example registry the script started.
set -euo pipefail
cd "$(dirname "$0")/.."

data=${BERTH_DATA_DIR:-/var/lib/berth}
bin=target/release/berth
[[ -x $bin ]] || bin=target/debug/berth
"$bin" --data-dir "$data" down
scripts/registry.sh stop "$data/demo-registry"
