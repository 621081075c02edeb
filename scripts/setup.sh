#!/usr/bin/env bash
# Create .venv (if needed) and install kdgrid with a CPU-capable torch pinned first:
# an unpinned torch would pull a multi-GB CUDA build. Idempotent and quick when done before.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.kdgrid-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  python -m pip install -q "torch==${KDGRID_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored" || true
  python -m pip install -q -e ".[offline,test]" 2>&1 | grep -v "is ignored" || true
  python -c "import torch, transformers, kdgrid" >/dev/null
  touch "$stamp"
fi
