#!/usr/bin/env bash
# Set up and run the test suite offline (tiny models; a few tests use the real MiniLM-L6 and GLUE data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${KDGRID_DATA_DIR:-}" ] && [ -d ../shared/data/glue ]; then
  export KDGRID_DATA_DIR="$(cd ../shared/data/glue && pwd)"
fi
python -m pytest -q "$@"
