#!/usr/bin/env bash
# berth's main job on a fresh Debian 12 machine as root: installs what it needs, builds berth,
# starts a local registry (Debian's docker-registry on a free 127.0.0.1 port) holding the
# example images (built from busybox-static by scripts/test-images.sh), and runs
# `berth up --manifests manifests/examples` in the foreground. The examples name
# `berth-test/*` images of Docker Hub; berth fetches them from the local registry as a
# docker.io mirror, so nothing leaves the machine. Extra arguments go to `berth up`
# (e.g. `-d` to run in the background). `scripts/down.sh` undoes it all.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked

data=${BERTH_DATA_DIR:-/var/lib/berth}
registry_dir=$data/demo-registry
addr=$(scripts/registry.sh start "$registry_dir")
scripts/test-images.sh push "$addr" hello sleeper >/dev/null
echo "example images in the registry at $addr (a mirror of docker.io for berth)"

export BERTH_DATA_DIR=$data
export BERTH_INSECURE_REGISTRIES=$addr
export BERTH_REGISTRY_MIRRORS=docker.io=$addr
exec target/release/berth up --manifests manifests/examples "$@"
