#!/usr/bin/env bash
# The label-efficiency benchmark at full size on one GPU, in one command that fits one 10-minute
# device call: generates the data (the benchmark's 300 train / 75 val / 100 test frames and a
# disjoint 300-frame pretraining set, 256x512), trains the frozen U-Net body (the default U-Net,
# width 32, depth 4) and the depth net once, then runs the key arms (random with 3 draws, entropy,
# core-set, the paper's additive EEM, the product's EEM, EEM + diversity; both protocols, 64x64
# cells) on as many seeds as the deadline
# allows (at least 3: the run starts no new seed after FULL_DEADLINE_MIN minutes, default 6), in
# one process, and writes into $OUT:
#   $OUT/full-size/{al.json.gz,al.md,al_frame.png,al_region.png}   $OUT/logs/*.log   $OUT/env.txt
# Run from the repository root:  OUT=/some/dir bash bench/gpu_al.sh
# Environment: python3 with torch, numpy, scipy, matplotlib, pillow, opencv; the project's other
# pins from the carried wheelhouse (bench/gpu_env.sh; device run with carry [".device-wheels", "segxalpb"]).
# Rehearsal of the whole script on a CPU at tiny size (what --quick sets):
#   DEVICE=cpu QUICK=1 OUT=/tmp/x bash bench/gpu_al.sh
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/segxal-gpu-al}
mkdir -p "$OUT/logs" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .device-wheels ]; then
    source bench/gpu_env.sh
    set -e  # gpu_env.sh leaves errexit off for the scripts that source it
fi
# the diversity arms' nearest-neighbour distances go through FAISS (segxal.selection.neighbors)
if ! "$PY" -c "import cityscapesscripts.helpers.labels, tqdm, faiss" 2>/dev/null; then
    echo "cityscapesscripts, tqdm or faiss missing: carry their wheels in .device-wheels/ (faiss-cpu==1.15.1," \
         "see bench/gpu_env.sh)" >&2; exit 2
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; nproc
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/env.txt"

gen() {  # gen FOLDER H W TRAIN VAL TEST SEED (drive logs of 5 frames)
    [ -d "$1" ] || "$PY" -c "
from segxal.data.synth import SynthConfig, generate
generate(SynthConfig(height=$2, width=$3, train_sequences=$4, val_sequences=$5, test_sequences=$6, seed=$7), '$1', workers=8)"
}
T0=$(date +%s)
if [ -n "${QUICK:-}" ]; then  # tiny: the sizes and schedules come from --quick
    gen "$WORK/al-q" 32 64 6 1 1 0 & gen "$WORK/pre-q" 32 64 2 1 1 1 & wait
    DATA=$WORK/al-q PRE=$WORK/pre-q SIZE=(--quick)
else
    gen "$WORK/al-256x512" 256 512 60 15 20 0 & gen "$WORK/pre-256x512" 256 512 60 2 2 1 & wait
    DATA=$WORK/al-256x512 PRE=$WORK/pre-256x512 SIZE=(--full --seeds 0 1 2 3 4 5 6 7 8 9)
fi
echo "data: $(( $(date +%s) - T0 )) s" >> "$OUT/env.txt"

rc=0
"$PY" bench/al_curve.py "${SIZE[@]}" --device "$DEVICE" --threads 4 --data "$DATA" --pretrain-data "$PRE" \
    --arms random entropy coreset eem-add eem eem+div --out "$OUT/full-size" --cache-dir "$WORK/cache" \
    --deadline-min "${FULL_DEADLINE_MIN:-6}" > "$OUT/logs/full-size.log" 2>&1 || rc=$?
echo "run: $(( $(date +%s) - T0 )) s, rc $rc" >> "$OUT/env.txt"
exit $rc
