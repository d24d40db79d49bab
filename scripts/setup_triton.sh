#!/usr/bin/env bash
# A real Triton Inference Server for the tests and `segxal up --backend triton`, in its OWN venv:
# the PyPI wheel nvidia-pytriton 0.7.0 bundles tritonserver 2.51.0 with its Python backend only
# (no ONNX Runtime backend). The wheel is installed without its Python dependencies (PyTriton's
# own client library is not used):
# we use the binary. numpy and onnxruntime are installed beside it for the Python backend's stub,
# which runs services/inference/triton_backend/model.py (ONNX Runtime inside Triton).
#
#   bash scripts/setup_triton.sh            # idempotent; seconds when already done
#   SEGXAL_TRITON_VENV=/opt/triton bash scripts/setup_triton.sh
#
# Prints "tritonserver: <path>", "backends: <path>", "site-packages: <path>" last.
# Exits non-zero only when the venv cannot be made (e.g. no package index).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTRITON_VERSION=0.7.0   # tritonserver 2.51.0
ORT_VERSION=1.31.1       # the CPU build of the version the project's .venv runs (onnxruntime-gpu)
NUMPY_VERSION=1.26.4    # < 2: with numpy 2 the stub (built on numpy 1) returns outputs of 0 bytes
VENV=${SEGXAL_TRITON_VENV:-.venv-triton}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
want="$PYTRITON_VERSION ort $ORT_VERSION numpy $NUMPY_VERSION"

stamp="$VENV/.segxal-triton"
server="$VENV/lib/python$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages/pytriton/tritonserver"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$server/bin/tritonserver" ]; then
  echo "[setup-triton] installing nvidia-pytriton==$PYTRITON_VERSION (tritonserver 2.51.0) into $VENV (~1 min)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # keep the venv out of git without touching the repo's .gitignore
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "numpy==$NUMPY_VERSION" "onnxruntime==$ORT_VERSION" >&2
  # last and without dependencies: its own (PyTriton's Python API) are not used here
  "$VENV/bin/python" -m pip install -q --no-deps "nvidia-pytriton==$PYTRITON_VERSION" >&2
  # The Python backend looks for its stub beside libtriton_python.so; the wheel keeps one per
  # Python version elsewhere. Copy the one matching this venv's Python (the stub embeds it).
  pyver=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  cp "$server/python_backend_stubs/$pyver/triton_python_backend_stub" "$server/backends/python/"
  # the binary loads its libraries (--help exits 1 by design; its usage text is the proof)
  if ! { "$server/bin/tritonserver" --help 2>&1 || true; } | grep -q -- "--model-repository"; then
    echo "[setup-triton] $server/bin/tritonserver does not run on this machine" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
echo "tritonserver: $(cd "$server/bin" && pwd)/tritonserver"
echo "backends: $(cd "$server/backends" && pwd)"
echo "site-packages: $(cd "$server/../.." && pwd)"
