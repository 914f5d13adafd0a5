#!/usr/bin/env bash
# The whole test suite: installs its tools, checks formatting and lints, runs every test
# (unit tests, the store conformance suite, and the integration tests against a real Temporal
# dev server and a Python caller, which the tests start themselves; moto for ECS; a real
# kube-apiserver for Kubernetes, built once from Debian's source package and cached).
set -euo pipefail
cd "$(dirname "$0")/.."
TEMPORAL_BIN=$(scripts/install-tools.sh --test-rig)
export TEMPORAL_BIN
# The first run builds kube-apiserver and kube-controller-manager (10-15 min, then cached).
scripts/k8s-rig.sh build
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
