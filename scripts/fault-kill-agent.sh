#!/usr/bin/env bash
# kill -9 of `berth agent` at N random points of rollouts, pulls and restarts (issue 9; CI runs
# 6 points): the test tests/hardening_deploy.rs with BERTH_KILL_POINTS=N, run with `cargo test`
# (no per-test deadline). Everything runs in a network namespace the test creates; its drop
# runs `berth down` and removes what it made. BERTH_KILL_SEED=S replays a run.
#
#   scripts/fault-kill-agent.sh [N=100]     (root)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
log=$(mktemp /tmp/berth-hardening.XXXXXX)
rc=0
BERTH_KILL_POINTS=${1:-100} cargo test --workspace --test hardening_deploy -- \
  an_agent_killed_at_random_points --nocapture >"$log" 2>&1 || rc=$?
grep -E "^(BERTH_KILL|round|all|test |thread|  )" "$log" || tail -50 "$log"
echo "took $((SECONDS - start)) s (full output: $log)"
exit $rc
