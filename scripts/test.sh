#!/usr/bin/env bash
# Every check, as README.md gives it and as CI runs it (.ci/run calls this script).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

step "install test dependencies"
scripts/install-deps.sh

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs"
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked

step "tests"
cargo test --workspace --locked --no-fail-fast

step "deploy/ (render, schemas, yamllint, checkov, node configs)"
scripts/deploy-check.sh

step "benches, each once"
cargo test --workspace --benches --locked

step "done"
