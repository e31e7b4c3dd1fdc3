#!/usr/bin/env bash
# The full test run: formatting, lints, every test (unit, property,
# integration against the real binary, the Azure backend against Azurite,
# doc-tests). `.ci/run` calls this, so
# a new user's first test run is exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# tests/spec_reader.rs runs the second reader of the format
# (tools/spec-reader), which is Python 3, standard library only.
if ! command -v python3 >/dev/null; then
    echo "tools/test.sh: python3 is needed (tests/spec_reader.rs runs tools/spec-reader)" >&2
    exit 2
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
# The Azure backend's tests (tests/azure_*.rs) run against Azurite, the
# Azure Storage emulator, installed from tools/package-lock.json and started
# here (and stopped again if this script started it). BI_LEDGER_SKIP_AZURE=1
# skips them, for a machine without Node.js.
if [[ "${BI_LEDGER_SKIP_AZURE:-}" == 1 ]]; then
    echo "== Azurite: skipped (BI_LEDGER_SKIP_AZURE=1)"
    unset AZURE_STORAGE_CONNECTION_STRING
else
    echo "== Azurite"
    if ! tools/azurite.sh status >/dev/null; then
        tools/azurite.sh start
        trap 'tools/azurite.sh stop' EXIT
    fi
    eval "$(tools/azurite.sh env)"
fi
echo "== cargo test"
cargo test --locked
