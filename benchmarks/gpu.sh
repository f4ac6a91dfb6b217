#!/usr/bin/env bash
# kdlight's GPU benchmark (issue 16), prepared to run on a machine with one CUDA GPU in under
# 10 minutes; see benchmarks/README.md, section "GPU".
#
#   bash benchmarks/gpu.sh              # on the GPU: writes JSON to $OUT, else benchmarks/out/
#   bash benchmarks/gpu.sh --quick      # tiny sizes on the GPU: checks it runs (numbers mean nothing)
#   bash benchmarks/gpu.sh --dry-run    # tiny sizes on the CPU: the same code path, ~1-2 min
#
# Steps (each under its own `timeout`; a failed step is reported and the next one still runs):
#   1. bench_kd.py --device cuda: ResNet-18 -> 5-layer CNN (cifar_resnet18_cnn) and ResNeXt-29 8x64d
#      -> ResNet-18 (cifar_resnext29_resnet18): bare loop, expert loop, plain loop, kdlight online,
#      cold and warm store. Needs CIFAR-10: ../shared/data/cifar10-jpeg.tar.gz or
#      $KDLIGHT_CIFAR10_ARCHIVE.
#   2. bench_imagefolder.py --device cuda: KD throughput (torchvision ResNet-34 -> ResNet-18) on a
#      synthetic ImageNet-style folder of JPEGs written to a temporary folder, against kdlight's
#      loader alone and the networks alone.
# Environment: PYTHON (default .venv/bin/python, else python3), OUT, KDLIGHT_CIFAR10_ARCHIVE,
# DEVICE (cuda; --dry-run sets cpu), CIFAR_STEPS, IF_STEPS, IF_IMAGES, IF_WORKERS, KD_TIMEOUT,
# IF_TIMEOUT (s).
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
DEVICE=${DEVICE:-cuda}
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --dry-run) QUICK=1; DEVICE=cpu ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu.sh: unknown argument '$arg'; valid: --quick, --dry-run, --help." >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # kdlight importable without an install
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [[ -z "${OUT:-}" ]]; then echo "*" >"$OUT_DIR/.gitignore"; fi  # results, not sources

if [[ "$DEVICE" == cuda ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch ($PYTHON) sees no CUDA device; run on a GPU machine, or use --dry-run to check the script on the CPU." >&2
    exit 2
fi
ARCHIVE=${KDLIGHT_CIFAR10_ARCHIVE:-$ROOT/../shared/data/cifar10-jpeg.tar.gz}
if [[ ! -e "$ARCHIVE" ]]; then
    echo "gpu.sh: CIFAR-10 not found at $ARCHIVE; set KDLIGHT_CIFAR10_ARCHIVE to cifar10-jpeg.tar.gz." >&2
    exit 2
fi
KDLIGHT_CIFAR10_ARCHIVE=$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")
export KDLIGHT_CIFAR10_ARCHIVE

if [[ "$DEVICE" == cpu ]]; then  # one thread: on a busy CPU a starved second thread stalls every op
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
fi
if [[ $QUICK == 1 ]]; then
    KD_ARGS=(--quick --batch-size 8 --cifar-steps "${CIFAR_STEPS:-2}")
    IF_ARGS=(--quick --steps "${IF_STEPS:-6}" --images "${IF_IMAGES:-48}")
    KD_TIMEOUT=${KD_TIMEOUT:-420}  # a busy CPU; the GPU budget applies to full runs
    IF_TIMEOUT=${IF_TIMEOUT:-180}
else
    KD_ARGS=(--cifar-steps "${CIFAR_STEPS:-50}")
    IF_ARGS=(--steps "${IF_STEPS:-300}" --images "${IF_IMAGES:-2000}")
    KD_TIMEOUT=${KD_TIMEOUT:-300}
    IF_TIMEOUT=${IF_TIMEOUT:-240}
fi
if [[ -n "${IF_WORKERS:-}" ]]; then IF_ARGS+=(--num-workers "$IF_WORKERS"); fi

FAILED=()
step() {  # step NAME TIMEOUT_S COMMAND...: stdout (the JSON) to $OUT_DIR/NAME.json, stderr to NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*" >&2
    local start=$SECONDS rc=0 why
    timeout --kill-after=15 "$limit" "$@" >"$OUT_DIR/$name.json.part" 2>"$OUT_DIR/$name.log" || rc=$?
    if [[ $rc == 0 ]]; then
        mv "$OUT_DIR/$name.json.part" "$OUT_DIR/$name.json"
        echo "   done in $((SECONDS - start)) s -> $OUT_DIR/$name.json" >&2
    else
        [[ $rc == 124 || $rc == 137 ]] && why="timed out after ${limit} s" || why="exit status $rc"
        echo "   FAILED ($why); last lines of $OUT_DIR/$name.log:" >&2
        tail -n 15 "$OUT_DIR/$name.log" >&2 || true
        FAILED+=("$name")
    fi
}

step bench_kd_cifar "$KD_TIMEOUT" "$PYTHON" benchmarks/bench_kd.py --device "$DEVICE" \
    --cases cifar_resnet18_cnn,cifar_resnext29_resnet18 "${KD_ARGS[@]}"
step bench_imagefolder "$IF_TIMEOUT" "$PYTHON" benchmarks/bench_imagefolder.py --device "$DEVICE" \
    "${IF_ARGS[@]}"

"$PYTHON" - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
lines = []
kd = out / "bench_kd_cifar.json"
if kd.exists():
    doc = json.loads(kd.read_text())
    lines.append(f"device {doc['device']} ({doc['machine'].get('cuda_device', doc['machine']['processor'])}), "
                 f"batch {doc['batch_size']}, quick={doc['quick']}")
    for name, case in doc["cases"].items():
        lines.append(f"{name}: {case['steps']} steps, case wall {case['case_wall_s']} s")
        for run, r in case["runs"].items():
            lines.append(f"  {run:<22} {r['samples_per_s']!s:>10} samples/s")
        for ratio, value in case.get("to_limit", {}).items():
            lines.append(f"  {ratio:<48} {value}")
img = out / "bench_imagefolder.json"
if img.exists():
    doc = json.loads(img.read_text())
    t = doc["tree"]
    lines.append(f"image folder: {t['train_images']} JPEGs, sides {t['side_range']}, input {doc['image_size']} px, "
                 f"batch {doc['batch_size']}, {doc['num_workers']} workers, {doc['precision']}")
    for run, r in doc["runs"].items():
        lines.append(f"  {run:<22} {r['samples_per_s']!s:>10} images/s, steady {r.get('steady_samples_per_s', r['samples_per_s'])}")
    for ratio, value in doc["ratios"].items():
        lines.append(f"  {ratio:<48} {value}")
text = "\n".join(lines)
(out / "summary.txt").write_text(text + "\n")
print(text)
EOF

echo "gpu.sh: total ${SECONDS} s; JSON, logs and summary.txt in $OUT_DIR" >&2
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "gpu.sh: failed steps: ${FAILED[*]}" >&2
    exit 1
fi
