#!/usr/bin/env bash
# Soak (issue 9; not in CI): N containers on this host under one `berth up` (sleepers in apps
# of 10 replicas, plus one web app), every app rolled to a new revision every ROUND seconds,
# for M minutes. Samples every 10 s into a CSV: the agent's (berth up's) RSS (and its anonymous
# part, without the binary's file pages) and open fds, its C heap in use (berth_process_heap_bytes
# from /metrics), the running containers, the host mounts under the data dir, the cgroups under our parent (all
# controllers), the links (veths) in our network namespace, the network namespaces of
# processes in our cgroups, the files under the data dir (but its git repositories), the sum
# of the apps' revisions and of their ready instances. Prints first/last/min/max of each and
# the RSS at rest (all N running and ready) at the end of every round, then the verdict: the
# RSS at rest of the last round minus that of the middle round must be at most SOAK_FLAT_KIB
# (default 2048) or the script fails. Then checks `berth down` left no mount, cgroup, process
# or link behind. Stop it early by killing this script's pid (the
# EXIT trap runs `berth down`); watch `free -g` on small machines.
#
#   scripts/soak.sh [N=200] [MINUTES=10]    (root; env: ROUND=60, SOAK_NETWORK=private|host,
#                                            BERTH_BIN=path/to/berth, default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
minutes=${2:-10}
round_secs=${ROUND:-60}
network=${SOAK_NETWORK:-private}
SB_TAG=soak
source scripts/sandbox.sh
sandbox_start sleeper hello

apps=$(((n - 1 + 9) / 10))
write_manifests() { # round
  local i replicas left=$((n - 1))
  for ((i = 0; i < apps; i++)); do
    replicas=$((left >= 10 ? 10 : left))
    left=$((left - replicas))
    cat >"$SB_WORK/manifests/sleep-$i.yaml" <<EOF
app: sleep-$i
image: berth-test/sleeper:latest
network: $network
replicas: $replicas
resources: { cpu: 50m, memory: 16Mi, pids: 16 }
update: { max_surge: 2, max_unavailable: 2, deadline: 5m }
stop: { grace: 2s }
env: { ROUND: "$1" }
EOF
  done
  cat >"$SB_WORK/manifests/web.yaml" <<EOF
app: web
image: berth-test/hello:latest
network: host
port: 8080
health: { http: /up, interval: 2s }
update: { max_surge: 0, max_unavailable: 1, deadline: 2m }
stop: { grace: 2s }
env: { ROUND: "$1" }
EOF
}

running() { berth ps --local -o json 2>/dev/null | python3 -c '
import json, sys
print(sum(1 for c in json.load(sys.stdin) if c["state"] == "running"))' || echo 0; }

write_manifests 0
start=$SECONDS
sandbox_up
echo "waiting for $n containers ($apps sleeper apps + web, network $network)"
while (($(running) < n)); do
  ((SECONDS - start < 900)) || { echo "FAIL: only $(running)/$n running after 15 min"; tail -30 "$SB_DATA/up/up.log"; exit 1; }
  sleep 5
done
echo "$n running after $((SECONDS - start)) s"

csv=${SOAK_CSV:-/tmp/berth-soak-$$.csv}
echo "t_s,rss_kib,anon_kib,heap_kib,fds,running,mounts,cgroups,links,netns,files,round,revisions,ready" >"$csv"
pid=$(up_pid)
end=$((SECONDS + minutes * 60))
next_round=$((SECONDS + round_secs))
round=0
t0=$SECONDS
while ((SECONDS < end)); do
  if ((SECONDS >= next_round)); then
    round=$((round + 1))
    write_manifests "$round"
    next_round=$((SECONDS + round_secs))
  fi
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
  heap=$({ in_ns curl -fsS --max-time 5 http://127.0.0.1:7070/metrics 2>/dev/null || true; } |
    awk '/^berth_process_heap_bytes\{state="in_use"\}/ {printf "%d", $2 / 1024}')
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  mounts=$(grep -cF "$SB_DATA" /proc/self/mountinfo || true)
  # (find fails on the hierarchies without our parent: `|| true` keeps `set -e -o pipefail`.)
  cgroups=$({ find /sys/fs/cgroup/*/"$SB_PARENT" -mindepth 1 -type d 2>/dev/null || true; } | wc -l)
  links=$({ in_ns ip -o link show 2>/dev/null || true; } | wc -l)
  netns=$({ find /sys/fs/cgroup/pids/"$SB_PARENT" /sys/fs/cgroup/"$SB_PARENT" -name cgroup.procs \
    -exec cat {} + 2>/dev/null || true; } | while read -r p; do
    readlink "/proc/$p/ns/net" 2>/dev/null || true; done | sort -u | wc -l)
  # Files outside the git repositories (`up`'s manifest repo and the controller's mirror grow
  # by one commit per round, by design).
  files=$({ find "$SB_DATA" -xdev -type f -not -path '*/manifests.git/*' \
    -not -path '*/controller/mirror/*' 2>/dev/null || true; } | wc -l)
  revs=$(berth status -o json 2>/dev/null | python3 -c '
import json, sys
a = json.load(sys.stdin)["apps"]
print(sum(x["revision"] for x in a), sum(x["ready"] for x in a), sep=",")' || echo 0,0)
  echo "$((SECONDS - t0)),$rss,$anon,${heap:-0},$fds,$(running),$mounts,$cgroups,$links,$netns,$files,$round,$revs" >>"$csv"
  sleep 10
done
echo "samples in $csv"
verdict=0
python3 - "$csv" "$n" "${SOAK_FLAT_KIB:-2048}" <<'EOF' || verdict=1
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
n, bound = int(sys.argv[2]), int(sys.argv[3])
for key in ("rss_kib", "anon_kib", "heap_kib", "fds", "running", "mounts", "cgroups", "links",
            "netns", "files", "revisions", "ready"):
    v = [int(r[key]) for r in rows]
    print(f"{key:9} first {v[0]:>8} last {v[-1]:>8} min {min(v):>8} max {max(v):>8}")
print(f"rounds of rolling updates: {rows[-1]['round']}")
# At rest: every container running and ready; a round's figure is its last such sample.
rest = {}
for r in rows:
    if int(r["running"]) == n and int(r["ready"]) == n:
        rest[int(r["round"])] = r
rounds = sorted(rest)
print("at rest per round (round: rss anon heap KiB, fds):")
for k in rounds:
    r = rest[k]
    print(f"  {k:>3}: {r['rss_kib']:>7} {r['anon_kib']:>7} {r['heap_kib']:>7}  {r['fds']}")
if len(rounds) < 3:
    sys.exit("VERDICT: too few rounds at rest to judge growth")
mid, last = rest[rounds[len(rounds) // 2]], rest[rounds[-1]]
growth = {k: int(last[k]) - int(mid[k]) for k in ("rss_kib", "anon_kib", "heap_kib", "fds")}
print(f"second half (round {mid['round']} -> {last['round']}): rss {growth['rss_kib']:+} KiB, "
      f"anon {growth['anon_kib']:+} KiB, heap {growth['heap_kib']:+} KiB, fds {growth['fds']:+}")
if growth["rss_kib"] > bound:
    sys.exit(f"VERDICT: RSS at rest grew {growth['rss_kib']} KiB > {bound} KiB over the second half")
print(f"VERDICT: flat (RSS at rest grew {growth['rss_kib']} KiB <= {bound} KiB over the second half)")
EOF
t=$SECONDS
berth down --timeout 10s
echo "down took $((SECONDS - t)) s"
check_nothing_left && echo "nothing left after down"
exit $verdict
