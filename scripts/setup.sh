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
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ examples/kdgrid-example-plugin/pyproject.toml -nt "$stamp" ]; then
  log=.venv/setup.log
  echo "installing kdgrid into .venv (log: $log) ..." >&2
  {
    python -m pip install --upgrade pip &&
    python -m pip install "torch==${KDGRID_TORCH_VERSION:-2.13.0}" &&
    python -m pip install -e ".[offline,test]" &&
    # The example plug-in (docs/plugins.md): the tests run its loss term, mapping and study.
    python -m pip install --no-deps -e examples/kdgrid-example-plugin
  } >"$log" 2>&1 || { tail -30 "$log" >&2; echo "setup failed: see $log" >&2; exit 1; }
  python -c "import torch, transformers, kdgrid" >/dev/null
  touch "$stamp"
fi
