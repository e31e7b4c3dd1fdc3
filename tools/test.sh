#!/usr/bin/env bash
# The full test run: formatting, lints, every test (unit, property,
# integration against the real binary, doc-tests). `.ci/run` calls this, so
# a new user's first test run is exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
