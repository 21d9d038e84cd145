#!/usr/bin/env bash
# Installs the Debian packages berth's tests and demo need. Idempotent: packages already
# present are not fetched again. Run as root on Debian 12.
#   scripts/install-deps.sh          test and demo packages
#   scripts/install-deps.sh --bench  also the peers the benchmarks compare against
set -euo pipefail

packages=(
  docker-registry   # CNCF Distribution registry: the real registry tests pull from
  busybox-static    # the test images' contents
  git               # manifests come from git repositories
  etcd-server       # HA store tests
  protobuf-compiler # etcd-client's build script needs protoc
  libprotobuf-dev   # ... and the well-known types (google/protobuf/descriptor.proto)
  prometheus        # promtool and the real-scrape test
  iproute2          # ip netns / veth for networking tests
  gcc libc6-dev     # the runtime tests compile a static syscall probe into their rootfs
  apache2-utils     # htpasswd for the basic-auth registry fixture
  chromium fonts-dejavu-core  # the dashboard test drives the page in headless Chromium
  curl jq ca-certificates python3
)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(runc crun skopeo umoci containerd wrk hyperfine nginx-light haproxy)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's packages may start their daemons where an init system runs; berth's tests never
# use them: they start their own on free loopback ports with storage in temp dirs.
