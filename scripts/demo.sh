#!/usr/bin/env bash
# Set up, run the demo study (real MiniLM-L6 teacher, real GLUE data) and print its report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${KDGRID_DATA_DIR:-}" ] && [ -d ../shared/data/glue ]; then
  export KDGRID_DATA_DIR=../shared/data/glue
fi
kdgrid run studies/demo.yaml
kdgrid report --study demo
