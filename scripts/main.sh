#!/usr/bin/env bash
# The README's first command: all set-up, synthetic driving scenes, then the full active-learning
# loop through the real services (segmentation, depth, EEM, coordinator, trainer as separate
# processes; SQLite, local files, CPU). Extra flags go to `segxal loop`
# (e.g. --oracle machine, --cycles 6, --db postgresql://...); `SEGXAL_INPROCESS=1` runs the
# in-process loop (`segxal al run`) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${SEGXAL_DATA:-data/synth-128x256}
OUT=${SEGXAL_OUT:-runs/main}
if [ ! -d "$DATA" ]; then
  # the main job's small split (400/100/100 frames): each cycle ranks the whole training pool
  .venv/bin/segxal data synth --out "$DATA" --height 128 --width 256 --seed 0 --train-sequences 80 --val-sequences 20
fi
if [ "${SEGXAL_INPROCESS:-0}" = 1 ]; then
  exec .venv/bin/segxal al run --data "$DATA" --out "$OUT" --cache-dir runs/cache "$@"
fi
exec .venv/bin/segxal loop --data "$DATA" --out "$OUT" --cache-dir runs/cache "$@"
