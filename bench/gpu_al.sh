#!/usr/bin/env bash
# The label-efficiency benchmark on a GPU machine, in one command (~7-8 minutes on one H200):
# generates the synthetic data, runs the CPU-size configuration (64x128, U-Net width 8, 3 seeds,
# every default arm, the CPU run's schedule: 320 steps per budget point, schedule check at 640) and the full-size
# one (256x512, the default U-Net, 3 seeds, the main arms, 120 steps, schedule check at 240 when the deadline allows) on CUDA,
# one process per seed and size, and writes the reports into $OUT:
#   $OUT/cpu-size/{al.json,al.md,al_frame.png,al_region.png,al_schedule.png}
#   $OUT/full-size/{...}   $OUT/logs/*.log   $OUT/env.txt
# Run from the repository root:  OUT=/some/dir bash bench/gpu_al.sh
# Needs python3 with torch, numpy, scipy, matplotlib, pillow, opencv; the project's other pins come
# from the carried wheelhouse that bench/gpu_env.sh installs (device run with carry
# [".device-wheels", "segxalpb"]), the one way every GPU script gets its environment.
# FULL_DEADLINE_MIN / CPU_DEADLINE_MIN: minutes after which a run starts no new arm (defaults 4.5 / 5).
# Dry run of this script's plumbing on a CPU machine: DEVICE=cpu QUICK=1 OUT=/tmp/x bash bench/gpu_al.sh
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:+--quick}  # tiny images and schedules (plumbing check only)
WORK=${WORK:-/tmp/segxal-gpu-al}
mkdir -p "$OUT/logs" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .device-wheels ]; then
    source bench/gpu_env.sh
    set -e  # gpu_env.sh leaves errexit off for the scripts that source it
elif ! "$PY" -c "import cityscapesscripts.helpers.labels, tqdm" 2>/dev/null; then
    echo "cityscapesscripts/tqdm missing and no .device-wheels/ (see bench/gpu_env.sh)" >&2; exit 2
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; nproc
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/env.txt"

gen() {  # gen FOLDER H W TRAIN VAL TEST (sequences of 5 frames; test trains the depth net)
    [ -d "$1" ] || "$PY" -c "
from segxal.data.synth import SynthConfig, generate
generate(SynthConfig(height=$2, width=$3, train_sequences=$4, val_sequences=$5, test_sequences=$6), '$1', workers=8)"
}
T0=$(date +%s)
if [ -n "$QUICK" ]; then  # quick mode: 32x64 frames for both (the sizes come from --quick)
    gen "$WORK/synth-64x128" 32 64 6 1 1; ln -sfn "$WORK/synth-64x128" "$WORK/synth-256x512"
else  # 300 train / 75 val / 50 test frames at both sizes
    gen "$WORK/synth-64x128" 64 128 60 15 10 &
    gen "$WORK/synth-256x512" 256 512 60 15 10 &
    wait
fi
echo "data: $(( $(date +%s) - T0 )) s" >> "$OUT/env.txt"

FULL_ARMS="random entropy bald coreset eem eem+kcenter eem-topq+cb+kcenter eem+floor"
pids=()
for s in 0 1 2; do
    small=()  # the CPU run's configuration (bench/results/al.md), so that the two tables compare
    [ -n "$QUICK" ] && small=(--quick)
    OMP_NUM_THREADS=2 "$PY" bench/al_curve.py "${small[@]}" --device "$DEVICE" --threads 2 --data "$WORK/synth-64x128" \
        --seeds $s --out "$WORK/cpu-size/s$s" --cache-dir "$WORK/cpu-size/cache" \
        --deadline-min "${CPU_DEADLINE_MIN:-5}" > "$OUT/logs/cpu-size-s$s.log" 2>&1 &
    pids+=($!)
    full=(--full --steps 120 --seed-steps 300)
    [ -n "$QUICK" ] && full=(--quick)
    OMP_NUM_THREADS=2 "$PY" bench/al_curve.py "${full[@]}" --device "$DEVICE" --threads 2 --data "$WORK/synth-256x512" \
        --seeds $s --arms $FULL_ARMS \
        --out "$WORK/full-size/s$s" --cache-dir "$WORK/full-size/cache" \
        --deadline-min "${FULL_DEADLINE_MIN:-4.5}" > "$OUT/logs/full-size-s$s.log" 2>&1 &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "runs: $(( $(date +%s) - T0 )) s, rc $rc" >> "$OUT/env.txt"

for size in cpu-size full-size; do
    jsons=("$WORK/$size"/s*/al.json)
    [ -e "${jsons[0]}" ] && "$PY" bench/al_curve.py --merge "${jsons[@]}" --out "$OUT/$size" > "$OUT/logs/$size-merge.log" 2>&1 || rc=1
done
echo "total: $(( $(date +%s) - T0 )) s" >> "$OUT/env.txt"
exit $rc
