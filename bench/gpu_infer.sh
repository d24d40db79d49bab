#!/usr/bin/env bash
# Frames/s per GPU (bench/gpu_infer.py) in one command on the lent GPU machine, table into $OUT:
#   device run, carry [".device-wheels", "segxalpb"] (see bench/gpu_env.sh), command:
#     bash bench/gpu_infer.sh
# Under 3 minutes (a time budget skips rows that would start late). Needs torch with CUDA, numpy,
# opencv (on that machine's python3) and the project's pure-Python pins from the carried wheelhouse
# (segxal.labels needs cityscapesscripts).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_infer}
mkdir -p "$OUT"
if [ -d .device-wheels ]; then
  source bench/gpu_env.sh
else
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1 || true
timeout 175 python3 bench/gpu_infer.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_infer.log"
