#!/usr/bin/env bash
# Training throughput of the default CNN in candle (primia's kernels) and in PyTorch on the CPU, alternating.
#
# Both sides train the same network (model/src/nets.rs, rebuilt in
# scripts/bench_train.py) on 28x28 float32 images, batch 64, AdamW with the
# default recipe and gradient clipping, on BENCH_THREADS threads (2). The
# repetitions alternate candle and PyTorch so that load from other
# processes hits both alike; the summary uses medians.
#
# Environment:
#   BENCH_REPS=5        repetitions of each side
#   BENCH_STEPS=30      timed training steps per repetition
#   BENCH_THREADS=2     threads for both
#   BENCH_RESNET=1      also measure ResNet-18 at 28x28 first (slow; its own
#                       BENCH_RESNET_REPS=3, BENCH_RESNET_STEPS=3,
#                       BENCH_RESNET_BATCH=64)
#   PRIMIA_BENCH_VENV   virtual environment with torch
#                       (default ~/.cache/primia-bench-venv; created and
#                       torch installed from PyPI when missing)
#
# Each repetition also prints cpu_ms_per_img, the CPU time of all the
# process's threads per image. On a machine busy with other work PyTorch's
# OpenMP threads spin while they wait for a core and its wall-clock figure
# collapses; BENCH_THREADS=1 compares the two without that effect.
#
# Last line:
#   train-throughput model=cnn candle_img_s=... torch_img_s=... ratio=...
#
# Measured on the 2-core development machine (AMD EPYC Zen 4, quiet),
# torch 2.15, 2 threads, medians of the alternating repetitions:
#   cnn       candle 2,334 img/s (0.80-0.93 ms CPU/img), torch 2,195
#             (0.87-1.10 ms CPU/img): ratio 1.06 (1.13 in a second run)
#   resnet18  (batch 64) candle 40.4, torch 61.7: ratio 0.65
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
reps="${BENCH_REPS:-5}"
steps="${BENCH_STEPS:-30}"
threads="${BENCH_THREADS:-2}"
venv="${PRIMIA_BENCH_VENV:-$HOME/.cache/primia-bench-venv}"

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "installing torch into $venv (once; large download)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet torch numpy
fi
py="$venv/bin/python"

export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

echo "building the candle bench" >&2
cargo bench -j2 -p primia-model --bench train_throughput --no-run --message-format=json \
    >"${TMPDIR:-/tmp}/primia-bench-build.json"
bin="$("$py" -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "train_throughput" and m.get("executable"):
        print(m["executable"])
' "${TMPDIR:-/tmp}/primia-bench-build.json" | tail -1)"
[ -x "$bin" ] || { echo "could not find the train_throughput bench binary" >&2; exit 1; }

# measure MODEL STEPS BATCH REPS: alternates the two sides, prints each figure
# and returns the summary line in $summary.
measure() {
    local model="$1" nsteps="$2" batch="$3" n="$4" c=() t=()
    for ((i = 1; i <= n; i++)); do
        local cl tl
        cl="$(BENCH_BATCH="$batch" "$bin" "$model" "$nsteps" 1 | tail -1)"
        echo "$cl"
        tl="$("$py" scripts/bench_train.py "$model" "$nsteps" --batch "$batch" --threads "$threads" | tail -1)"
        echo "$tl"
        c+=("${cl##*img_s=}")
        t+=("${tl##*img_s=}")
    done
    summary="$("$py" -c '
import statistics, sys
model, n = sys.argv[1], int(sys.argv[2])
c = [float(v) for v in sys.argv[3:3 + n]]
t = [float(v) for v in sys.argv[3 + n:]]
mc, mt = statistics.median(c), statistics.median(t)
print(f"train-throughput model={model} candle_img_s={mc:.1f} torch_img_s={mt:.1f} ratio={mc / mt:.2f}")
' "$model" "${#c[@]}" "${c[@]}" "${t[@]}")"
}

echo "threads=$threads reps=$reps load: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${BENCH_RESNET:-0}" = 1 ]; then
    measure resnet18 "${BENCH_RESNET_STEPS:-3}" "${BENCH_RESNET_BATCH:-64}" "${BENCH_RESNET_REPS:-3}"
    echo "$summary"
fi
measure cnn "$steps" 64 "$reps"
echo "$summary"
