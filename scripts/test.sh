#!/usr/bin/env bash
# The whole test suite: installs its tools, checks formatting and lints, runs every test
# (unit tests, the store conformance suite, and the integration tests against a real Temporal
# dev server and a Python caller, which the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
TEMPORAL_BIN=$(scripts/install-tools.sh)
export TEMPORAL_BIN
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
