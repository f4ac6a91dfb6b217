#!/usr/bin/env bash
# The CPU-scale method comparisons (docs/results/cifar10-cpu.md): the ResNet-20 teacher of
# cifar_cnn_kd_5pct_cpu distilled on 5% of CIFAR-10, seeds 1-3, each method at its config's
# defaults, the student alone and KD as rows of the same table, then one report.
#
#   bash benchmarks/cpu_table.sh TABLE [JOBS]     # JOBS default 2
#   LIST=1 bash benchmarks/cpu_table.sh TABLE     # the rows and their overrides, nothing run
#
# TABLE (each: one student, its "alone" and "kd" rows, then the methods):
#   fidelity          the 5-layer CNN: every logit and feature method of the fidelity study
#                     (17 rows)                                    -> docs/fidelity_study
#   methods3          the 5-layer CNN: the methods added with the transformers that take it
#                                                                  -> docs/cpu_tables/methods3
#   methods3_resnet8  ResNet-8: FSP and KD-SVD (equal channel counts at the paired stages) and
#                     SDD (a classifier on the pooled last map)   -> docs/cpu_tables/methods3_resnet8
#   deit              DeiT-Tiny (32x32, patch 4) from the same ResNet-20: KD, DeiT's token, OFA
#                                                                  -> docs/cpu_tables/deit
#   vit               ViT-Tiny from a ViT-Small teacher: KD, ViTKD -> docs/cpu_tables/vit
#
# A run's folder is logs/cpu_table/TABLE/ROW/seedN (checkpoints, TensorBoard); its record
# (metrics.json: hparams, accuracies, wall time, the teacher's accuracy) is also kept in
# docs/..._study/runs/ROW/seedN/, which is committed: the table is reported from those records,
# so it grows across machines and sessions, and a run recorded there is never run again. A
# teacher is trained once into the store by the first run that needs it (the others wait on its
# lock); the report's teacher section lists every teacher the recorded runs used, with its
# accuracy, so runs from two trainings of it would show as two teachers. Raw teacher maps are
# stored up to 10 GB (teacher_store.max_gb=10).
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE=${1:?usage: bash benchmarks/cpu_table.sh fidelity|methods3|methods3_resnet8|deit|vit [JOBS]}
JOBS=${2:-2}
PY=${PY:-.venv/bin/python}
OUT=logs/cpu_table/$TABLE
KD="+experiment=cifar_cnn_kd_5pct_cpu teacher_store.max_gb=10"
VS="--versus method=kd,logit_standardization=false"
case "$TABLE" in
  fidelity)
    DOCS=docs/fidelity_study
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
    ;;
  methods3)
    DOCS=docs/cpu_tables/methods3
    SGD="module=sgd module.optimizer.lr=0.05"
    VS="--versus method=kd,logit_standardization=false,optimizer=Adam"  # kd, not DOT's kd_sgd
    SHARED_ROWS="alone kd"  # the same commands as the fidelity table's rows: their records serve
    ROWS=(
      "alone|+experiment=cifar_cnn_5pct_cpu"
      "kd|$KD distill=kd"
      "ab|$KD distill=ab"
      # AB as kdlight first ran it: its Adam moments carried from the AB stage into the cross-entropy stage
      # (the docs' "where a sign disagrees": what a fresh optimizer state changes)
      "ab_carry|$KD distill=ab distill.fresh_optimizer=false"
      "ft|$KD distill=ft"
      "ofd|$KD distill=ofd"
      "mlkd|$KD distill=mlkd"
      "wttm|$KD distill=wttm"
      "nkd|$KD distill=nkd"
      "uskd|$KD distill=uskd"
      "kdpp|$KD distill=kdpp"
      "wsld|$KD distill=wsld"
      "tfkd|$KD distill=tfkd"
      "simkd|$KD distill=simkd"
      # DOT is an optimizer (SGD with split task / distillation momenta): it cannot run under the
      # table's Adam, so it has rows of its own under one SGD (mdistiller's CIFAR-100 lr 0.05,
      # momentum 0.9, no schedule): the student alone, DOT's base KD (CE 0.1 + KD 0.9, T 4), DOT
      "alone_sgd|+experiment=cifar_cnn_5pct_cpu $SGD"
      "kd_sgd|$KD distill=kd distill.alpha=null distill.ce_weight=0.1 distill.kd_weight=0.9 distill.temperature=4 $SGD"
      "dot|$KD distill=dot $SGD"
    )
    ;;
  methods3_resnet8)
    DOCS=docs/cpu_tables/methods3_resnet8
    R8="+experiment=cifar_resnet8_kd_5pct_cpu teacher_store.max_gb=10"
    ROWS=(
      "alone|+experiment=cifar_resnet8_5pct_cpu"
      "kd|$R8 distill=kd"
      "fsp|$R8 distill=fsp"
      "kdsvd|$R8 distill=kdsvd"
      "sdd|$R8 distill=sdd"
    )
    ;;
  deit)
    DOCS=docs/cpu_tables/deit
    DEIT="+experiment=cifar_resnet20_vit_kd_cpu teacher_store.max_gb=10"
    ROWS=(
      "alone|$DEIT distill=null"
      "kd|$DEIT distill=kd"
      "deit|$DEIT distill=deit"
      "ofa|$DEIT distill=ofa"
    )
    ;;
  vit)
    DOCS=docs/cpu_tables/vit
    VIT="+experiment=cifar_vit_kd_cpu teacher_store.max_gb=10"
    ROWS=(
      "alone|$VIT distill=null"
      "kd|$VIT distill=kd"
      "vitkd|$VIT distill=vitkd"
    )
    ;;
  *)
    echo "cpu_table.sh: unknown table '$TABLE'; valid: fidelity, methods3, methods3_resnet8, deit, vit" >&2
    exit 2
    ;;
esac
SHARED_ROWS=${SHARED_ROWS:-}
if [ "${LIST:-0}" = 1 ]; then  # LIST=1: print "ROW<TAB>the run's overrides" per row and stop
  for row in "${ROWS[@]}"; do printf '%s\t%s\n' "${row%%|*}" "${row#*|}"; done
  exit 0
fi
finished() { [ -f "$1/metrics.json" ] && grep -q '"status": "finished"' "$1/metrics.json"; }
queue=$(mktemp)
trap 'rm -f "$queue"' EXIT
# the student alone (the first row) of every seed first: it needs no teacher, so it runs while
# the first KD run trains the teacher and the other runs wait on its lock
order=()
for seed in 1 2 3; do order+=("$seed|${ROWS[0]}"); done
for seed in 1 2 3; do
  for row in "${ROWS[@]:1}"; do order+=("$seed|$row"); done
done
for item in "${order[@]}"; do
  seed=${item%%|*}
  row=${item#*|}
  name=${row%%|*}
  dir="$OUT/$name/seed$seed"
  rec="$DOCS/runs/$name/seed$seed"
  if finished "$rec"; then
    continue
  fi
  # a row whose command is the fidelity table's (same overrides, same seed) is not run again:
  # runs are bit-reproducible on one machine type, so its record is that run's record
  shared="docs/fidelity_study/runs/$name/seed$seed"
  if [[ " $SHARED_ROWS " == *" $name "* ]] && finished "$shared"; then
    mkdir -p "$rec" && cp "$shared/metrics.json" "$rec/metrics.json"
    continue
  fi
  # a run finished in logs/ but not yet recorded is recorded, not rerun; the folder of a run that
  # was stopped before it finished (this script's own output) is cleared and the run starts over
  run="finished $dir || { rm -rf $dir && OMP_NUM_THREADS=1 $PY -m kdlight.train ${row#*|} seed=$seed hydra.run.dir=$dir > /dev/null 2>&1; }"
  keep="mkdir -p $rec && cp $dir/metrics.json $rec/metrics.json"
  echo "{ $run; } && finished $dir && $keep || echo 'failed: $dir (see its train.log)'" >> "$queue"
done
export -f finished
echo "$(wc -l < "$queue") runs to go into $OUT (records: $DOCS/runs), $JOBS at a time"
xargs -d '\n' -P "$JOBS" -I{} bash -c '{}' < "$queue"
# shellcheck disable=SC2086
"$PY" -m kdlight.report "$DOCS/runs" --out "$DOCS" $VS
# the summary the results page includes (docs/results/cifar10-cpu.md)
"$PY" benchmarks/cpu_table_md.py "$DOCS/runs" > "$DOCS/summary.md"
