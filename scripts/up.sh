#!/usr/bin/env bash
# berth's main job on a fresh Debian 12 machine as root: installs what it needs, builds berth
# and runs `berth up` on the example apps (manifests/examples).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked
exec target/release/berth up --manifests manifests/examples "$@"
