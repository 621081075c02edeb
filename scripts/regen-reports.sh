#!/usr/bin/env bash
# Regenerate every committed report under reports/ with the current analysis from its committed
# results.parquet, for a checkout without the store (scripts/reports.sh writes them from the store), with the
# teachers and majority-class floors the store recorded (reports/teachers.csv). Each report folder is cleared first (results.parquet and nested
# second-baseline folders kept) so no file of the old layout stays behind; then reports/index.html.
# The second baselines (vs-hid-seq/, vs-3L/) have no plots, as scripts/reports.sh writes them.
# Sections that need a store (reproducibility, mapping convergence, layers copied and mapped) are then absent.
# Usage: bash scripts/regen-reports.sh   (from anywhere; PYTHON=/path/to/python if kdgrid is not on python's path)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
r=reports
kd() {  # kd STUDY OUT_DIR ARGS...: one report of reports/STUDY/results.parquet into OUT_DIR
    local study=$1 dir=$2; shift 2
    local question
    question=$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["description"])' "studies/$study.yaml")
    mkdir -p "$dir"
    find "$dir" -maxdepth 1 -type f ! -name results.parquet -delete
    rm -rf "$dir/plots"
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$py" -m kdgrid report --from "$r/$study/results.parquet" \
        --teachers "$r/teachers.csv" --metric auto --question "$question" --out "$dir" --format md "$@" >/dev/null
}
abl=objective.intermediate.attention,data.max_train_examples,objective.mapping.kind,objective.intermediate.alpha
kd ablation-cpu $r/ablation-cpu --factors $abl \
   --baseline objective.intermediate.attention=mse,objective.mapping.kind=uniform,objective.intermediate.alpha=0.5
kd objectives-cpu $r/objectives-cpu --factors method --baseline method=vanilla-kd
kd objectives-cpu $r/objectives-cpu/vs-hid-seq --factors method --baseline method=hid-seq --no-plots
kd what_is_lost-cpu $r/what_is_lost-cpu --factors student --baseline student=8AH
kd what_is_lost-cpu $r/what_is_lost-cpu/vs-3L --factors student --baseline student=3L --no-plots
kd learnable_mapping-cpu $r/learnable_mapping-cpu --factors objective.mapping.init,student_from \
   --baseline objective.mapping.init=uniform,student_from=layers-1-2-3-4
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$py" -m kdgrid report --index --out $r
echo "regenerated under $r/"
