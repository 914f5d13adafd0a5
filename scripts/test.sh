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
# The full feature set (every provider and sink, and ecs-default-vpc) is linted and tested; the
# minimal one (`local,sqlite`: no AWS, kube or HTTP client) must build and lint clean too, and
# its unit tests show that a backend left out is refused with the feature's name.
full=(--features ecs-default-vpc)
minimal=(--no-default-features --features local,sqlite)
cargo clippy --workspace --all-targets --locked "${full[@]}" -- -D warnings
cargo clippy -p compute-worker -p compute-activities --lib --bins --locked "${minimal[@]}" -- -D warnings
cargo test -p compute-worker -p compute-activities --lib --bins --locked "${minimal[@]}"
if cargo tree -p compute-worker -e normal "${minimal[@]}" --prefix none | grep -E '^(aws-(config|sdk-|smithy|runtime|types|sigv4|credential)|kube|k8s-openapi|reqwest|sqlx-postgres) '; then
  echo "the minimal build pulls a crate it must not (above)" >&2
  exit 1
fi
if cargo tree -p compute-workflows -e normal --prefix none | grep -E '^(aws-(config|sdk-|smithy|runtime|types|sigv4|credential)|kube|k8s-openapi|reqwest|sqlx)'; then
  echo "compute-workflows pulls a backend crate (above): it must depend on the contract only" >&2
  exit 1
fi
cargo test --workspace --all-targets --locked "${full[@]}"
