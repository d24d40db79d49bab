#!/usr/bin/env bash
# Source this on the lent GPU machine (no registry there; its python3 already holds torch, numpy,
# onnx, onnxruntime (CPU), opencv, scipy, matplotlib): the project's other pins from a carried
# wheelhouse installed beside them (--target), and the generated protos from here.
#   here:  pip download (python 3.12, manylinux x86_64, --no-deps) of grpcio, grpcio-health-checking,
#          tritonclient, protobuf, cityscapesscripts, pycocotools, mcap, mcap-protobuf-support,
#          foxglove-schemas-protobuf, fsspec, psycopg(+binary), grad-cam, ttach, python-rapidjson,
#          pyquaternion, appdirs, coloredlogs, humanfriendly into .device-wheels/ (ignored by git)
#   there: device run with carry [".device-wheels", "segxalpb"], then `source bench/gpu_env.sh`
set -e
# --target, not a venv: that python3 is itself a venv (/opt/torch/.venv), and a venv made from it
# with --system-site-packages would see the base interpreter's packages, not its torch
if [ ! -d /tmp/sxdeps/grpc ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/sxdeps $(ls .device-wheels/*.whl) 2>&1 | grep -v WARN || true
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/sxdeps .device-wheels/*.tar.gz \
    2>&1 | grep -v WARN || true  # grad-cam (sdist): only the tests need it
fi
export PYTHONPATH=$PWD:/tmp/sxdeps PYTHONUNBUFFERED=1
python3 -c "import torch, grpc, tritonclient.grpc, onnxruntime, segxalpb; print('gpu env:', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda', 'grpc', grpc.__version__, 'ort', onnxruntime.__version__)"
set +e
