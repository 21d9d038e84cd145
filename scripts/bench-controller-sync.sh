#!/usr/bin/env bash
# Measures the controller's part of "commit -> new revision serving": from `git push` of a
# manifest change until a host's long-poll returns the new assignment, with the webhook
# (`POST /v1/sync`) sent right after the push, as a git host would. Prints each run and the
# median. Usage: scripts/bench-controller-sync.sh [RUNS] (needs target/debug/berth or BERTH).
set -euo pipefail
runs=${1:-10}
berth=$(realpath "${BERTH:-$(dirname "$0")/../target/debug/berth}")
dir=$(mktemp -d /tmp/berth-bench-XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
g() { git -c user.name=b -c user.email=b@b -c commit.gpgsign=false "$@"; }
git init -q --bare "$dir/r.git"
mkdir "$dir/w" && cd "$dir/w" && git init -q -b main
digest() { printf 'sha256:%064d' "$1"; }
printf 'app: web\nimage: busybox@%s\n' "$(digest 0)" > web.yaml
g add . && g commit -qm v0 && g push -q "$dir/r.git" HEAD:main
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$berth" controller --repo "$dir/r.git" --listen "127.0.0.1:$port" --data-dir "$dir/data" \
  --poll-interval 1h 2>"$dir/log" &
pid=$!
url=http://127.0.0.1:$port
for _ in $(seq 50); do [ -s "$dir/data/controller/token" ] && curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$dir/data/controller/token")" "$url/v1/status" && break; sleep 0.1; done
[ -s "$dir/data/controller/token" ] || { cat "$dir/log" >&2; exit 1; }
auth="Authorization: Bearer $(cat "$dir/data/controller/token")"
curl -sf -H "$auth" -X POST "$url/v1/sync" >/dev/null
curl -sf -H "$auth" -H 'content-type: application/json' -d '{"name":"bench"}' "$url/v1/agents/register" >/dev/null
times=()
for i in $(seq 1 "$runs"); do
  v=$(curl -sf -H "$auth" "$url/v1/agents/bench/assignment" | jq .version)
  curl -sf -H "$auth" "$url/v1/agents/bench/assignment?after=$v&wait=30" -o "$dir/poll" &
  poll=$!
  sleep 0.2
  printf 'app: web\nimage: busybox@%s\n' "$(digest "$i")" > web.yaml
  start=$(date +%s%N)
  g commit -qam "v$i" && g push -q "$dir/r.git" HEAD:main
  curl -sf -H "$auth" -X POST "$url/v1/sync" >/dev/null
  wait "$poll"
  end=$(date +%s%N)
  [ "$(jq '.apps[0].target.number' "$dir/poll")" = "$((i + 1))" ] || { echo "run $i: wrong revision" >&2; exit 1; }
  ms=$(( (end - start) / 1000000 ))
  times+=("$ms")
  echo "run $i: push -> assignment ${ms} ms"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median " a[int((NR+1)/2)] " ms over " NR " runs"}'
