#!/usr/bin/env bash
# Reproduce reports/: run the papers' -cpu studies on GLUE and write each report (Markdown, HTML,
# plots) and its tidy results (Parquet) under reports/<study>/. Finished runs are never redone, so an
# interrupted call picks up where it stopped.   Usage: bash scripts/reports.sh [study ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The reports record the library versions they were made with; make those the pinned ones of constraints.txt
# (only the packages that differ are installed, so this is a no-op once the venv matches).
if ! differ=$(python scripts/constraints.py check constraints.txt); then
  echo "installing the versions constraints.txt pins for: $differ" >&2
  # shellcheck disable=SC2086  # one argument per package name
  python -m pip install -q -c constraints.txt $differ
  python scripts/constraints.py check constraints.txt >/dev/null
fi
if [ -z "${KDGRID_DATA_DIR:-}" ] && [ -d ../shared/data/glue ]; then
  export KDGRID_DATA_DIR=../shared/data/glue
fi
db=${KDGRID_DB:-reports.duckdb}
studies=("$@")
[ ${#studies[@]} -gt 0 ] || studies=(ablation-cpu objectives-cpu what_is_lost-cpu learnable_mapping-cpu learnable_steps-cpu)
for s in "${studies[@]}"; do
  start=$SECONDS
  kdgrid run "studies/$s.yaml" --db "$db" --workers "${KDGRID_WORKERS:-2}"
  echo "$s: kdgrid run took $((SECONDS - start)) s wall"
  # A new report replaces the whole folder: no file of an earlier layout (a section that no longer applies) stays.
  rm -rf "reports/$s"
  kdgrid report --study "$s" --db "$db" --out "reports/$s" --format md >/dev/null
  kdgrid export --study "$s" --db "$db" --out "reports/$s/results.parquet"
  # Second baselines that reports/README.md cites.
  case "$s" in
    objectives-cpu) kdgrid report --study "$s" --db "$db" --baseline method=hid-seq --out "reports/$s/vs-hid-seq" --format md --no-plots >/dev/null ;;
    what_is_lost-cpu) kdgrid report --study "$s" --db "$db" --baseline student=3L --out "reports/$s/vs-3L" --format md --no-plots >/dev/null ;;
  esac
  echo "reports/$s/ written"
done
kdgrid report --index --out reports
