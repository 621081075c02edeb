#!/usr/bin/env bash
# Recompute the committed reports' statistics with the current analysis (kdgrid 0.2) from each study's
# committed results.parquet (the stores are gone). Writes to ${REVISIT_OUT:-/tmp/revisit}/<study>/, never
# to reports/.   Usage: bash scripts/revisit.sh   (from the repository root, kdgrid on PYTHONPATH or installed)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${REVISIT_OUT:-/tmp/revisit}
py=${PYTHON:-python}
kd() { PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$py" -m kdgrid report --metric auto --no-plots --format json "$@" >/dev/null; }
r=reports
abl=objective.intermediate.attention,data.max_train_examples,objective.mapping.kind,objective.intermediate.alpha
kd --from $r/ablation-cpu/results.parquet --factors $abl \
   --baseline objective.intermediate.attention=mse,objective.mapping.kind=uniform,objective.intermediate.alpha=0.5 \
   --out $out/ablation-cpu
kd --from $r/ablation-cpu/results.parquet --factors $abl --no-block-seed \
   --baseline objective.intermediate.attention=mse,objective.mapping.kind=uniform,objective.intermediate.alpha=0.5 \
   --out $out/ablation-cpu-noblock
kd --from $r/objectives-cpu/results.parquet --factors method --baseline method=vanilla-kd --out $out/objectives-cpu
kd --from $r/objectives-cpu/results.parquet --factors method --baseline method=hid-seq --out $out/objectives-cpu-vs-hid-seq
kd --from $r/what_is_lost-cpu/results.parquet --factors student --baseline student=3L --out $out/what_is_lost-cpu
kd --from $r/what_is_lost-cpu/results.parquet --factors student --baseline student=8AH --out $out/what_is_lost-cpu-vs-8AH
kd --from $r/learnable_mapping-cpu/results.parquet --factors objective.mapping.init,student_from \
   --baseline objective.mapping.init=uniform,student_from=layers-2-4-6 --out $out/learnable_mapping-cpu
kd --from $r/learnable_steps-cpu/results.parquet --factors train.epochs.intermediate,mapping \
   --baseline mapping=uniform --out $out/learnable_steps-cpu
echo "written under $out/"
