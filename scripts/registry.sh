#!/usr/bin/env bash
# A real CNCF Distribution registry (Debian's docker-registry) for tests and demos, on a free
# 127.0.0.1 port with its storage under DIR. Only what this script started is stopped.
#
#   scripts/registry.sh start DIR [--basic-auth USER:PASS]   prints 127.0.0.1:PORT
#   scripts/registry.sh stop DIR                             stops it (pid in DIR/registry.pid)
set -euo pipefail

usage() { echo "usage: $0 start DIR [--basic-auth USER:PASS] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1 dir=$2
shift 2

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
  auth=""
  if [[ "${1:-}" == "--basic-auth" ]]; then
    [[ -n "${2:-}" ]] || usage
    auth=$2
  fi
  mkdir -p "$dir/storage"
  dir=$(cd "$dir" && pwd)
  if [[ -f "$dir/registry.pid" ]] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
    cat "$dir/registry.addr"
    exit 0
  fi
  port=$(free_port)
  {
    echo "version: 0.1"
    echo "log: { level: warn, accesslog: { disabled: true } }"
    echo "storage:"
    echo "  filesystem: { rootdirectory: $dir/storage }"
    echo "  delete: { enabled: true }"
    echo "http: { addr: 127.0.0.1:$port, secret: berth-test-secret }"
    if [[ -n "$auth" ]]; then
      htpasswd -Bbn "${auth%%:*}" "${auth#*:}" > "$dir/htpasswd"
      echo "auth: { htpasswd: { realm: berth-test, path: $dir/htpasswd } }"
    fi
  } > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  echo $! > "$dir/registry.pid"
  echo "127.0.0.1:$port" > "$dir/registry.addr"
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)
    if [[ "$code" == 200 || "$code" == 401 ]]; then
      echo "127.0.0.1:$port"
      exit 0
    fi
    kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "registry did not come up on 127.0.0.1:$port; log: $dir/registry.log" >&2
  cat "$dir/registry.log" >&2 || true
  exit 1
  ;;
stop)
  if [[ -f "$dir/registry.pid" ]]; then
    pid=$(cat "$dir/registry.pid")
    # Only our own registry: the pid file's process must be docker-registry with our config.
    if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "docker-registry serve $(cd "$dir" && pwd)/config.yml"; then
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$dir/registry.pid"
  fi
  ;;
*) usage ;;
esac
