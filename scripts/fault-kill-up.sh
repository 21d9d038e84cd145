#!/usr/bin/env bash
# kill -9 of `berth up` at N random points of rollouts (issue 9; not in CI, the CI test
# tests/hardening_faults.rs does 5 points). Each round edits the app (a new revision), sleeps
# a random 0-3 s, kills `up` with SIGKILL, restarts it and checks, once the revision is ready:
# exactly one instance runs, of that revision, and an instance of that revision that ran
# before the kill kept its pid (not restarted). Then `berth down` must leave nothing behind.
#
#   scripts/fault-kill-up.sh [N=100]        (root; BERTH_BIN=path/to/berth, default debug)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
SB_TAG=kill9
source scripts/sandbox.sh
sandbox_start hello

manifest() {
  cat >"$SB_WORK/manifests/hello.yaml" <<EOF
app: hello
image: berth-test/hello:latest
network: host
port: 8080
health: { http: /up, interval: 1s, timeout: 1s }
update: { max_surge: 0, max_unavailable: 1, deadline: 60s }
stop: { grace: 2s }
env: { ROUND: "$1" }
EOF
}

# id revision state pid, one line per container of the app
containers() {
  berth ps -a --local -o json | python3 -c '
import json, sys
for c in json.load(sys.stdin):
    print(c["id"], c["revision"] or 0, c["state"], c.get("pid") or 0)'
}

wait_ready() { # revision timeout
  local rev=$1 deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if berth status -o json 2>/dev/null | python3 -c '
import json, sys
a = json.load(sys.stdin)["apps"][0]
sys.exit(0 if a["revision"] == int(sys.argv[1]) and a["ready"] == 1 else 1)' "$rev"; then
      return 0
    fi
    sleep 0.2
  done
  echo "FAIL: revision $rev not ready after $2 s"; tail -40 "$SB_DATA/up/up.log"; return 1
}

manifest 0
sandbox_up
wait_ready 1 120
fail=0
for round in $(seq 1 "$n"); do
  rev=$((round + 1))
  manifest "$round"
  sleep "$(python3 -c 'import random; print(random.uniform(0, 3))')"
  pid=$(up_pid)
  kill -KILL "$pid"
  while [[ -d /proc/$pid ]]; do sleep 0.05; done
  before=$(containers)
  sandbox_up
  wait_ready "$rev" 120 || { fail=1; break; }
  sleep 3
  after=$(containers)
  running=$(awk '$3 == "running"' <<<"$after")
  if [[ $(grep -c . <<<"$running") != 1 || $(awk '{print $2}' <<<"$running") != "$rev" ]]; then
    echo "FAIL round $round: want one running instance of revision $rev, got:"; echo "$after"; fail=1
  fi
  while read -r id r state p; do
    [[ "$r" == "$rev" && "$state" == running ]] || continue
    grep -q "^$id $r running $p\$" <<<"$after" || {
      echo "FAIL round $round: $id (pid $p) of revision $rev was restarted:"; echo "$after"; fail=1; }
  done <<<"$before"
  echo "round $round/$n: ok (revision $rev)"
done
berth down --timeout 5s
check_nothing_left || fail=1
((fail == 0)) && echo "all $n rounds passed; nothing left after down"
exit $fail
