"""`segxal_onnxruntime`: a Triton Python-based backend that serves a model repository's model.onnx
through ONNX Runtime, with the same contract as Triton's native `onnxruntime_onnx` platform: the
config's inputs/outputs, max_batch_size + dynamic_batching (Triton's own scheduler forms the
batches; this code runs each batch once), version_policy (Triton's), instance_group (one ONNX
Runtime session per instance, on the GPU for KIND_GPU when the CUDA provider loads).

Why: the tritonserver in the PyPI wheel nvidia-pytriton has the Python backend only, no ONNX
Runtime backend. A Python-based backend (Triton >= 23.x) lives in the backend directory as
`<backend dir>/segxal_onnxruntime/model.py` and is named by `backend: "segxal_onnxruntime"` in
config.pbtxt, so a version folder still holds only model.onnx: the same repository, one config
line apart, serves Triton's native backend, this one and the project's own server.

Runs inside the Python backend's stub interpreter (the system's libpython, which ignores
PYTHONPATH): numpy and onnxruntime come from SEGXAL_TRITON_SITE_PACKAGES (scripts/setup_triton.sh's
venv), appended to sys.path, not prepended, so that the stub's own modules keep precedence. It
imports nothing from the project.

Environment (set by services/triton/server.py): SEGXAL_TRITON_SITE_PACKAGES,
SEGXAL_TRITON_INTRA_OP_THREADS (0 = ONNX Runtime's default), SEGXAL_TRITON_ORT_SPINNING ("1", the
default, lets ONNX Runtime threads spin within a run, like the project's server; "0" never).
"""
import json
import os
import sys

for _path in filter(None, os.environ.get("SEGXAL_TRITON_SITE_PACKAGES", "").split(os.pathsep)):
    if _path not in sys.path:
        sys.path.append(_path)

import numpy as np  # noqa: E402 - after the path set-up above
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # noqa: E402


def _session_options(instances: int) -> ort.SessionOptions:
    """As the project's server (services.inference.runtime): threads = the process's cores shared
    among the instances unless set; spinning within a run (stopping when it returns) unless off."""
    opts = ort.SessionOptions()
    threads = int(os.environ.get("SEGXAL_TRITON_INTRA_OP_THREADS", "0") or 0)
    opts.intra_op_num_threads = threads or max(1, len(os.sched_getaffinity(0)) // max(1, instances))
    opts.inter_op_num_threads = 1
    spinning = os.environ.get("SEGXAL_TRITON_ORT_SPINNING", "1") == "1"
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3
    return opts


def _providers(kind: str, device_id: str) -> list:
    if kind == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": int(device_id or 0)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{path} is missing")
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        self.session = ort.InferenceSession(
            path, sess_options=_session_options(instances),
            providers=_providers(args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id")))
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        graph_inputs = {a.name for a in self.session.get_inputs()}
        graph_outputs = {a.name for a in self.session.get_outputs()}
        if set(self.input_names) != graph_inputs or not set(self.output_names) <= graph_outputs:
            raise pb_utils.TritonModelException(
                f"{path}: config inputs {self.input_names} / outputs {self.output_names} do not match the "
                f"graph's {sorted(graph_inputs)} / {sorted(graph_outputs)}")

    def execute(self, requests):
        """Triton's dynamic batcher hands over the requests of one batch; requests whose non-batch
        shapes agree run as one ONNX Runtime call (concatenated on the batch axis), and each gets
        its rows back."""
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names}
            key = tuple((n, a.shape[1:] if self.batched else a.shape, a.dtype.str) for n, a in feeds.items())
            wanted = list(request.requested_output_names()) or self.output_names
            groups.setdefault(key, []).append((i, feeds, wanted))
        for members in groups.values():
            for i, response in self._run_group(members):
                responses[i] = response
        return responses

    def _run_group(self, members):
        names = set()
        for _, _, wanted in members:
            names.update(wanted)
        names = [n for n in self.output_names if n in names]
        if len(members) == 1 or not self.batched:
            runs = [([m], m[1]) for m in members]
        else:
            runs = [(members, {n: np.concatenate([m[1][n] for m in members]) for n in self.input_names})]
        for batch, feeds in runs:
            try:
                values = dict(zip(names, self.session.run(names, feeds)))
            except ort_state.InvalidArgument as e:
                error = pb_utils.TritonError(f"model {self.name!r} rejected the inputs: "
                                             f"{str(e).splitlines()[0][:300]}", pb_utils.TritonError.INVALID_ARG)
                for i, _, _ in batch:
                    yield i, pb_utils.InferenceResponse(error=error)
                continue
            start = 0
            for i, feeds_i, wanted in batch:
                rows = next(iter(feeds_i.values())).shape[0] if self.batched else 0
                stop = start + rows
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(values[n][start:stop] if self.batched else values[n]))
                           for n in wanted]
                start = stop
                yield i, pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self.session = None
