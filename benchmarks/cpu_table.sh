#!/usr/bin/env bash
# The CPU-scale method comparison (docs/results/cifar10-cpu.md): the ResNet-20 teacher of
# cifar_cnn_kd_5pct_cpu -> the 5-layer CNN on 5% of CIFAR-10, the student alone, KD and every
# logit and feature method at its config's defaults, seeds 1-3, then one report.
#
#   bash benchmarks/cpu_table.sh [OUT] [JOBS]        # OUT default logs/cpu_table, JOBS default 2
#
# Runs are queued seed by seed (every row's seed 1 first), JOBS at a time, one thread each
# (OMP_NUM_THREADS=1); a run whose folder already holds a finished record is skipped, so the
# command resumes where a stopped one left off. The first KD run trains the teacher into the
# store (the other runs wait on its lock). Raw teacher maps are stored up to 10 GB
# (teacher_store.max_gb=10), so NST, VID and ReviewKD are served after their first seed.
# Then: python -m kdlight.report OUT --versus method=kd,logit_standardization=false
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-logs/cpu_table}
JOBS=${2:-2}
PY=${PY:-.venv/bin/python}
KD="+experiment=cifar_cnn_kd_5pct_cpu teacher_store.max_gb=10"
ROWS=(
  "alone|+experiment=cifar_cnn_5pct_cpu"
  "kd|$KD distill=kd"
  "dkd|$KD distill=dkd"
  "dist|$KD distill=dist"
  "ctkd|$KD distill=ctkd"
  "kd_ls|$KD distill=kd distill.logit_standardization=true distill.alpha=null distill.ce_weight=0.1 distill.kd_weight=9 distill.temperature=2"
  "fitnets|$KD distill=fitnets"
  "at|$KD distill=at"
  "crd|$KD distill=crd"
  "reviewkd|$KD distill=reviewkd"
  "nst|$KD distill=nst"
  "sp|$KD distill=sp"
  "pkt|$KD distill=pkt"
  "rkd|$KD distill=rkd"
  "vid|$KD distill=vid"
  "cc|$KD distill=cc"
  "fitnets_one_stage|$KD distill=fitnets distill.form=one_stage"
)
queue=$(mktemp)
trap 'rm -f "$queue"' EXIT
for seed in 1 2 3; do
  for row in "${ROWS[@]}"; do
    name=${row%%|*}
    dir="$OUT/$name/seed$seed"
    if [ -f "$dir/metrics.json" ] && grep -q '"status": "finished"' "$dir/metrics.json"; then
      continue
    fi
    echo "OMP_NUM_THREADS=1 $PY -m kdlight.train ${row#*|} seed=$seed hydra.run.dir=$dir > /dev/null 2>&1 || echo 'failed: $dir (see its train.log)'" >> "$queue"
  done
done
echo "$(wc -l < "$queue") runs to go into $OUT, $JOBS at a time"
xargs -d '\n' -P "$JOBS" -I{} bash -c '{}' < "$queue"
"$PY" -m kdlight.report "$OUT" --versus method=kd,logit_standardization=false
