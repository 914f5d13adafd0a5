#!/usr/bin/env bash
# The main job on embedded defaults: starts a Temporal dev server, the worker (SQLite + the
# local provider), runs a sample TenantComputeWorkflow that provisions a tenant, prints its
# status, then deletes the tenant and stops everything. With --keep, the server and the
# worker stay up (Ctrl-C to stop) so you can try the `temporal` commands from README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true
TEMPORAL=$(scripts/install-tools.sh)
# Only what the demo runs: the local provider and the SQLite store (no AWS, kube or HTTP
# client crate is compiled).
cargo build --locked --bin compute-worker --no-default-features --features local,sqlite
worker_bin="${CARGO_TARGET_DIR:-target}/debug/compute-worker"
mkdir -p .compute-worker
port=${TEMPORAL_PORT:-7233}
export TEMPORAL_ADDRESS=127.0.0.1:$port
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
if ! "$TEMPORAL" operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; then
  echo "Starting the Temporal dev server on $TEMPORAL_ADDRESS (UI on port $((port + 1000)))..."
  "$TEMPORAL" server start-dev --headless --ip 127.0.0.1 --port "$port" --ui-port $((port + 1000)) \
    --log-level error --db-filename .compute-worker/temporal.db \
    --search-attribute TenantId=Keyword >.compute-worker/temporal.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    "$TEMPORAL" operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
echo "Starting compute-worker (task queue compute, sqlite://compute-worker.db, local provider)..."
"$worker_bin" run >.compute-worker/worker.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "Worker started" .compute-worker/worker.log && break; sleep 0.1; done
wf="demo-$(date +%s)"
echo "Provisioning tenant 'demo' with TenantComputeWorkflow ($wf)..."
"$TEMPORAL" workflow execute --type TenantComputeWorkflow --task-queue compute --workflow-id "$wf" \
  --input '{"operation":"provision","request":{"tenantId":"demo","spec":{"command":["sleep","3600"]},"metadata":{"owner":"readme"}}}'
echo
echo "Status (temporal workflow query -w $wf --name status):"
"$TEMPORAL" workflow query -w "$wf" --name status
echo
echo "Workflows of tenant demo (temporal workflow list --query \"TenantId='demo'\"):"
"$TEMPORAL" workflow list --query "TenantId='demo'"
if $keep; then
  echo "Server and worker keep running; logs in .compute-worker/. Ctrl-C to stop."
  wait
else
  echo "Deleting tenant 'demo'..."
  "$TEMPORAL" workflow execute --type TenantComputeWorkflow --task-queue compute \
    --workflow-id "$wf-delete" --input '{"operation":"delete","request":{"tenantId":"demo"}}' >/dev/null
  echo "Done: tenant demo provisioned, queried and deleted."
fi
