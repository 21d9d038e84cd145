#!/usr/bin/env bash
# Long fuzz runs (issue 9; CI runs the same properties with a few hundred cases): the manifest
# parser and validator (manifests/tests/hostile_yaml.rs, plus the random-bytes and damaged-YAML
# properties of revision_props.rs) and layer extraction into a temp root
# (agent/tests/hardening_unpack_fuzz.rs, needs root). Every case must end in a value or an
# error within its time bound, never a panic; extraction must write nothing outside the root.
# A failing case is shrunk and saved under proptest-regressions/ by proptest (replayed first
# on the next run). Prints cases, wall time and failures per suite.
#
#   scripts/fuzz.sh [CASES=20000]       (root for the extraction suite)
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-20000}
# --workspace: the same feature set as the rest of the build (no rebuild of dependencies).
cargo build --workspace --tests --test hostile_yaml --test revision_props --test hardening_unpack_fuzz
fail=0
run() { # test filter cases
  local start=$SECONDS log
  log=$(mktemp /tmp/berth-fuzz.XXXXXX)
  if PROPTEST_CASES=$3 cargo test -q --workspace --test "$1" -- "$2" >"$log" 2>&1; then
    echo "$1 $2: $3 cases per property, $((SECONDS - start)) s, 0 failures"
  else
    echo "$1 $2: FAILED after $((SECONDS - start)) s:"; grep -E "panicked|minimal failing|Test failed" "$log" | head -20
    fail=1
  fi
  rm -f "$log"
}
run hostile_yaml hostile_manifests "$cases"
run hostile_yaml alias_and_merge "$((cases / 10))"
run hostile_yaml deeply_nested "$((cases / 50))"
run revision_props never_panic "$cases"
run hardening_unpack_fuzz "" "$cases"
exit $fail
