#!/usr/bin/env bash
# Source this on the lent GPU machine (no registry there; its python3 already holds torch, numpy,
# onnx, onnxruntime (CPU), opencv, scipy, matplotlib): a venv over those system packages plus the
# project's other pins from a carried wheelhouse, and the generated protos from here.
#   here:  pip download (python 3.12, manylinux x86_64, --no-deps) of grpcio, grpcio-health-checking,
#          tritonclient, protobuf, cityscapesscripts, pycocotools, mcap, mcap-protobuf-support,
#          foxglove-schemas-protobuf, fsspec, psycopg(+binary), grad-cam, ttach, python-rapidjson,
#          pyquaternion, appdirs, coloredlogs, humanfriendly into .device-wheels/ (ignored by git)
#   there: device run with carry [".device-wheels", "segxalpb"], then `source bench/gpu_env.sh`
set -e
if [ ! -x /tmp/sx/bin/python ]; then
  python3 -m venv --system-site-packages /tmp/sx
  /tmp/sx/bin/pip install -q --no-index --no-deps --no-build-isolation .device-wheels/* 2>&1 | grep -v WARN || true
fi
export PATH=/tmp/sx/bin:$PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python -c "import torch, grpc, tritonclient.grpc, onnxruntime, segxalpb; print('gpu env:', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda', 'grpc', grpc.__version__, 'ort', onnxruntime.__version__)"
set +e
