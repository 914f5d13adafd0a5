#!/usr/bin/env bash
# Benchmark of the Kubernetes provider's callback latency (pod Ready -> compute-provisioned in
# the caller's history) over N concurrent provisions, and of the watch connections the worker
# holds. Starts its own Temporal dev server and Kubernetes rig. Usage: scripts/bench-k8s.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
TEMPORAL_BIN=$(scripts/install-tools.sh)
export TEMPORAL_BIN
scripts/k8s-rig.sh build
# The dev profile: the numbers are for a debug build, and no release rebuild is needed.
cargo bench --quiet --locked --profile dev --bench k8s_callback -- --bench "${1:-100}"
