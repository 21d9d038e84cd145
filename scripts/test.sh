#!/usr/bin/env bash
# The whole test suite, as a newcomer or CI runs it on a fresh Debian 12 machine as root:
# installs what the tests need, builds once, runs every test in parallel with deadlines.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

profile=default
[[ "${CI:-}" == "true" ]] && profile=ci

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --profile "$profile" --no-fail-fast "$@"
