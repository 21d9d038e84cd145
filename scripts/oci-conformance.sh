#!/usr/bin/env bash
# Runs the opencontainers/runtime-tools validation suite against `berth runtime` and prints
# the passed/failed counts (root, not in CI). Fetches nothing: give it a checkout of
# runtime-tools (commit 260e151 measured in docs/runtime.md) whose test binaries are built
# (`make runtimetest validation-executables`, Go >= 1.19).
#
#   scripts/oci-conformance.sh /path/to/runtime-tools [TEST-NAME...]
#
# BERTH_BIN picks the binary (default: target/debug/berth of this checkout); OCI_TIMEOUT the
# per-test timeout in seconds (60). Per-test TAP output goes to $OUT (default a temp dir).
set -euo pipefail
tools=${1:?usage: $0 RUNTIME-TOOLS-DIR [TEST...]}
shift
tools=$(cd "$tools" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
berth=$(realpath "${BERTH_BIN:-$here/target/debug/berth}")
timeout_s=${OCI_TIMEOUT:-60}
[ -x "$berth" ] || { echo "no berth binary at $berth (cargo build, or set BERTH_BIN)" >&2; exit 2; }
[ -x "$tools/runtimetest" ] || { echo "$tools/runtimetest missing: run 'make runtimetest validation-executables' there" >&2; exit 2; }
out=${OUT:-$(mktemp -d /tmp/berth-oci-conformance.XXXXXX)}
mkdir -p "$out"
wrapper="$out/berth-runtime"
printf '#!/bin/sh\nexec %q runtime "$@"\n' "$berth" > "$wrapper"
chmod +x "$wrapper"

if [ $# -gt 0 ]; then
  tests=()
  for t in "$@"; do tests+=("validation/$t/$t.t"); done
else
  mapfile -t tests < <(cd "$tools" && find validation -name '*.t' | sort)
fi
passed=0 failed=0
cd "$tools"
for t in "${tests[@]}"; do
  name=$(basename "$t" .t)
  RUNTIME="$wrapper" timeout "$timeout_s" "./$t" > "$out/$name.tap" 2>&1 || true
  p=$(grep -c '^ok ' "$out/$name.tap" || true)
  f=$(grep -c '^not ok ' "$out/$name.tap" || true)
  passed=$((passed + p)) failed=$((failed + f))
  printf '%-40s %5d passed %4d failed\n' "$name" "$p" "$f"
done
echo "TOTAL passed $passed failed $failed (TAP in $out)"
