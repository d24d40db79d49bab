#!/usr/bin/env bash
# The README's first command: all set-up, synthetic driving scenes, then the active-learning loop
# (EEM strategy, simulated human fixing the EEM regions) on small CPU defaults.
# Extra flags go to `segxal al run` (e.g. --strategy entropy --oracle machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${SEGXAL_DATA:-data/synth-128x256}
OUT=${SEGXAL_OUT:-runs/main}
if [ ! -d "$DATA" ]; then
  .venv/bin/segxal data synth --out "$DATA" --height 128 --width 256 --seed 0
fi
.venv/bin/segxal al run --data "$DATA" --out "$OUT" --cache-dir runs/cache "$@"
