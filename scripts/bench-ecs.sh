#!/usr/bin/env bash
# Benchmark of batched ECS tracking against a moto server: 100 in-flight executions by default.
# Usage: scripts/bench-ecs.sh [executions] [cycles]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tools.sh >/dev/null
scripts_dir=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$scripts_dir/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break; sleep 0.1; done
AWS_ENDPOINT_URL_ECS="http://127.0.0.1:$port" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench cargo run --quiet --locked -p compute-activities \
  --example ecs_tracking_bench -- "${1:-100}" "${2:-20}"
