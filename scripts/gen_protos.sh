#!/usr/bin/env bash
# The one build step that turns protos/ into Python (package segxalpb, never edited by hand).
# protos/segxalpb/<service>/v1/<service>.proto -> segxalpb/<service>/v1/<service>_pb2{,_grpc}.py
set -euo pipefail
cd "$(dirname "$0")/.."
protos=$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
[ -n "$protos" ] || exit 0
want=$( (cd protos && cat $protos; cat ../requirements.txt) | sha256sum | cut -d' ' -f1)
[ "$(cat segxalpb/.stamp 2>/dev/null)" = "$want" ] && exit 0
rm -rf .gen.tmp && mkdir -p .gen.tmp
.venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=.gen.tmp --pyi_out=.gen.tmp \
  --grpc_python_out=.gen.tmp $protos
find .gen.tmp/segxalpb -type d -exec touch {}/__init__.py \;
echo "$want" > .gen.tmp/segxalpb/.stamp
rm -rf segxalpb && mv .gen.tmp/segxalpb segxalpb && rm -rf .gen.tmp
echo "[setup] generated segxalpb/ from protos/"
