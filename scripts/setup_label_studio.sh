#!/usr/bin/env bash
# Label Studio for the people who label (clients/label_studio), in its OWN venv: label-studio
# 1.23.2 pins numpy 2.2 and protobuf 7, which the project's .venv cannot take (tritonclient needs
# protobuf < 7). Also headless Chromium, which the bridge's screenshot test drives.
#
#   bash scripts/setup_label_studio.sh            # idempotent; seconds when already done
#   SEGXAL_LS_VENV=/opt/ls bash scripts/setup_label_studio.sh
#
# Prints "label-studio: <path to the executable>" and "chromium: <path or 'missing'>" last.
# Exits non-zero only when the Label Studio venv cannot be made (e.g. no package index).
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VERSION=1.23.2
VENV=${SEGXAL_LS_VENV:-.venv-ls}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# Every package of that venv pinned (requirements-label-studio.txt, a freeze of a working one):
# label-studio pins few of its own, and a new major of one (sentry-sdk 3.0) stops it from starting.
LOCK=requirements-label-studio.txt
want="$LS_VERSION $(sha256sum "$LOCK" | cut -d' ' -f1)"
stamp="$VENV/.segxal-label-studio"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/label-studio" ]; then
  echo "[setup-ls] installing label-studio==$LS_VERSION into $VENV (first run: ~2 min, ~1 GB)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # keep the venv out of git without touching the repo's .gitignore
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "label-studio==$LS_VERSION" -c "$LOCK" >&2
  "$VENV/bin/python" -c "import label_studio, label_studio_sdk.converter.brush" >&2
  echo "$want" > "$stamp"
fi

# Chromium for the task-page screenshot. Optional: without it only that test skips.
chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup-ls] installing chromium (apt-get)" >&2
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2; then
    chromium=$(command -v chromium || true)
  fi
fi
echo "label-studio: $(cd "$VENV/bin" && pwd)/label-studio"
echo "chromium: ${chromium:-missing}"
