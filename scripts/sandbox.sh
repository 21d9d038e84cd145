# Sourced by scripts/soak.sh and scripts/fault-kill-up.sh (not run on its own): a network
# namespace of our own with a Distribution registry inside it holding the test images, a temp
# data dir and a cgroup parent of our own, and `berth` run inside the namespace. `sandbox_exit`
# (installed as the EXIT trap) runs `berth down` and removes only what we made.
#
# Needs root, docker-registry, curl, nsenter, ip (scripts/install-deps.sh).

BERTH=${BERTH_BIN:-$PWD/target/debug/berth}
SB_TAG=${SB_TAG:-sb}-$$
SB_NS=berth-$SB_TAG
SB_WORK=$(mktemp -d "/tmp/berth-$SB_TAG.XXXXXX")
SB_DATA=$SB_WORK/data
SB_PARENT=berth-$SB_TAG
SB_REG_PID=
export BERTH_CGROUP_PARENT=$SB_PARENT
unset BERTH_CONTROLLER BERTH_TOKEN

in_ns() { nsenter --net="/run/netns/$SB_NS" "$@"; }
berth() { in_ns "$BERTH" --data-dir "$SB_DATA" "$@"; }

sandbox_exit() {
  set +e
  berth down --timeout 5s >/dev/null 2>&1
  [[ -n "$SB_REG_PID" ]] && kill "$SB_REG_PID" 2>/dev/null && wait "$SB_REG_PID" 2>/dev/null
  ip netns del "$SB_NS" 2>/dev/null
  for c in /sys/fs/cgroup/*/; do rmdir "$c$SB_PARENT" 2>/dev/null; done
  rm -rf "$SB_WORK"
}

sandbox_start() {
  trap sandbox_exit EXIT
  ip netns add "$SB_NS"
  ip -n "$SB_NS" link set lo up
  mkdir -p "$SB_WORK/registry/storage" "$SB_WORK/manifests"
  cat >"$SB_WORK/registry/config.yml" <<EOF
version: 0.1
log: { level: warn, accesslog: { disabled: true } }
storage:
  filesystem: { rootdirectory: $SB_WORK/registry/storage }
http: { addr: 127.0.0.1:5000, secret: berth-test-secret }
EOF
  # nsenter directly, not through the in_ns function: `$!` must be the registry's pid (nsenter
  # execs it), not a subshell's, or sandbox_exit kills the subshell and the registry stays.
  nsenter --net="/run/netns/$SB_NS" docker-registry serve "$SB_WORK/registry/config.yml" \
    >"$SB_WORK/registry/log" 2>&1 &
  SB_REG_PID=$!
  for _ in $(seq 100); do
    in_ns curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null && break
    sleep 0.1
  done
  in_ns bash scripts/test-images.sh push 127.0.0.1:5000 "$@" >/dev/null
}

# berth up -d on $SB_WORK/manifests, images from the in-namespace registry as docker.io.
sandbox_up() {
  berth up -d --manifests "$SB_WORK/manifests" --name "$SB_TAG" \
    --insecure-registry 127.0.0.1:5000 --registry-mirror docker.io=127.0.0.1:5000 >/dev/null
}

up_pid() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$SB_DATA/up/up.pid"; }

# Fails (prints and returns 1) if berth left a mount, cgroup or process behind.
check_nothing_left() {
  local bad=0
  if grep -F "$SB_DATA" /proc/self/mountinfo; then echo "LEAK: mounts under $SB_DATA"; bad=1; fi
  for c in /sys/fs/cgroup/*/"$SB_PARENT"; do
    [[ -d "$c" ]] || continue
    if find "$c" -mindepth 1 -type d | grep -q .; then
      echo "LEAK: cgroups under $c:"; find "$c" -mindepth 1 -type d; bad=1
    fi
  done
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF "$SB_DATA"; then
      echo "LEAK: process ${p#/proc/}: $({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)"; bad=1
    fi
  done
  local netns_left
  netns_left=$(in_ns ip -o link show 2>/dev/null | grep -vc ': lo:' || true)
  if [[ "$netns_left" != 0 ]]; then echo "LEAK: $netns_left links in $SB_NS:"; in_ns ip -o link show; bad=1; fi
  return $bad
}
