#!/usr/bin/env bash
# Static checks, run by .ci/run before the tests: ruff (lint and format) on the repository, mypy --strict on kdgrid/
# (settings in pyproject.toml). Uses .venv when scripts/setup.sh made one, else the python on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  . .venv/bin/activate
fi
python -m ruff check .
python -m ruff format --check .
python -m mypy
