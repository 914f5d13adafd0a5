#!/usr/bin/env bash
# The throughput and latency bench (README "Performance"): builds the worker in release
# (`local,sqlite`; the simulated provider is always compiled in), starts its own Temporal dev
# server, and runs scripts/bench.py: the floor and ours side by side at each level, then the
# scale run. It prints figures and asserts only that every operation completed.
# Usage: scripts/bench.sh [--levels 1,20,200,1000] [--ops N] [--scale 10000]
#                         [--scale-delay 5m] [--scale-kill]
# BENCH_WORKER_ARGS adds flags to the worker's command line (e.g. its --metrics-address).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--help" ]; then sed -n 2,8p "$0"; exit 0; fi
TEMPORAL=$(scripts/install-tools.sh)
python=$(dirname "$TEMPORAL")/python
[ -x "$python" ] || python=python3
cargo build --release --locked --bin compute-worker --no-default-features --features local,sqlite
worker_bin="${CARGO_TARGET_DIR:-target}/release/compute-worker"
work=$(mktemp -d)
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export TEMPORAL_ADDRESS=127.0.0.1:$port
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
"$TEMPORAL" server start-dev --headless --ip 127.0.0.1 --port "$port" --ui-port $((port + 1)) \
  --log-level error \
  --search-attribute TenantId=Keyword >"$work/temporal.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  "$TEMPORAL" operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1 && break
  sleep 0.2
done
"$TEMPORAL" operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null
"$python" scripts/bench.py --worker "$worker_bin" "$@"
