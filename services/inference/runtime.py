"""One model version on ONNX Runtime: load the graph, check it against its config.pbtxt, check
requests against the config, run a batch.

Like Triton's onnxruntime backend, the config is the contract: its inputs and outputs must exist
in the graph with the same datatypes and compatible shapes, and a config without inputs/outputs
is completed from the graph (Triton's auto-complete), so a user model needs only a few lines.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from tritonclient.grpc import model_config_pb2 as mc

from segxal.errors import FailedPrecondition, InvalidInput
from segxal.modelspec import TensorSpec, datatype_of, numpy_dtype
from services.common.model_repository import config_datatype, protocol_datatype
from services.inference.admission import request_pixels
from services.inference.config import RuntimeConfig

log = logging.getLogger(__name__)

_DATATYPE_FOR_ORT = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES", "tensor(bfloat16)": "BF16",
}


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a container's
    `cpu` limit), at least 1. ONNX Runtime's own default counts the machine's physical cores,
    which oversubscribes a pod limited to fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
            period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
            if quota > 0:
                cores = min(cores, math.ceil(quota / period))
        except (OSError, ValueError):
            pass
    return max(1, cores)


def intra_op_threads(runtime: RuntimeConfig) -> int:
    """Threads of an execution that runs alone: the configured number, else every core the process
    may use."""
    return runtime.intra_op_threads or available_cores()


def parallel_runs(runtime: RuntimeConfig, config: mc.ModelConfig) -> int:
    """How many batches of a model execute at once: the config's instance count, and on CPU at least
    the configured `cpu_parallel_runs` (default: one per core; see OnnxModel)."""
    instances = sum(g.count for g in config.instance_group) or 1
    if runtime.device != "cpu":
        return instances
    return max(instances, runtime.cpu_parallel_runs or available_cores())


def _providers(runtime: RuntimeConfig) -> list:
    if runtime.device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("device=cuda asked, but this onnxruntime has no CUDAExecutionProvider; using CPU")
    elif runtime.device != "cpu":
        raise InvalidInput(f"runtime device must be cpu or cuda, got {runtime.device!r}")
    return ["CPUExecutionProvider"]


def _graph_dims(arg) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]  # symbolic/None -> -1


def _dims_compatible(config_dims: list[int], graph_dims: list[int]) -> bool:
    return len(config_dims) == len(graph_dims) and all(
        c == -1 or g == -1 or c == g for c, g in zip(config_dims, graph_dims))


@dataclass(frozen=True)
class _IO:
    spec: TensorSpec
    dtype: np.dtype


class OnnxModel:
    """A loaded model version.

    Args:
        path: the version's model.onnx.
        config: the model's config (completed in place from the graph when it lists no tensors).
        runtime: provider and thread settings.

    Raises:
        FailedPrecondition: the file is not a loadable ONNX graph, or disagrees with the config
            (the message names the tensor); the caller keeps serving what it served before.
    """

    def __init__(self, path: Path, config: mc.ModelConfig, runtime: RuntimeConfig):
        threads = intra_op_threads(runtime)
        self.session = self._load(path, runtime, threads)
        # ONNX Runtime runs every node of a graph whatever outputs a run asks for (measured:
        # tests/test_cam_skipped_at_beta_zero.py), so a request for fewer outputs (the EEM service
        # leaves out `cam` when beta = 0) runs on a copy of the graph cut down to them, made on first
        # use and kept per output set: the CAM's backward half is then not computed at all.
        self._path, self._runtime, self._threads = path, runtime, threads
        self._pruned: dict[frozenset[str], ort.InferenceSession] = {}
        self.pruned_node_counts: dict[frozenset[str], int] = {}  # nodes of each cut-down copy
        self._pruned_lock = threading.Lock()
        if runtime.device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            log.warning("%s: CUDAExecutionProvider failed to initialise; running on CPU", path)
        self.config = config
        self.parallel_runs = parallel_runs(runtime, config)
        # On CPU, an execution that starts while another runs takes a one-thread session of the same
        # graph: overlapping executions then split the cores between them instead of fighting over
        # one intra-op pool. Measured (bench/infer_overhead.py, 2 cores, 256x512 U-Net): two
        # concurrent one-thread runs gave ~20 % more frames/s and ~12 % less CPU per frame than
        # two-thread runs, whose parallel sections stall whenever one thread loses its core; a lone
        # execution still gets every core. Costs a second copy of the weights in memory.
        self._narrow = None
        if self.session.get_providers()[0] == "CPUExecutionProvider" and self.parallel_runs > 1 and threads > 1:
            self._narrow = self._load(path, runtime, 1)
        self._running = 0
        self._running_lock = threading.Lock()
        self.overlapped_runs = 0  # executions that started while another ran (the one-thread session)
        self.batched = config.max_batch_size > 0
        self._complete_config()
        self.inputs = self._check_tensors("input", config.input, self.session.get_inputs())
        self.outputs = self._check_tensors("output", config.output, self.session.get_outputs())
        self.output_names = [o.spec.name for o in self.outputs]
        params = {k: v.string_value for k, v in config.parameters.items()}
        self.spatial_multiple = int(params.get("spatial_multiple", "1") or 1)
        self.layout = params.get("input_layout", "")
        # the model's own peak memory per pixel (bench/inference_memory.py); None: the server's
        self.bytes_per_pixel = self._positive_int(params, "bytes_per_pixel")
        # runs of more pixels than this give back what they grew the arena by (RuntimeConfig)
        self.arena_keep_pixels = runtime.arena_keep_pixels
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                          "cpu:0;gpu:0" if runtime.device == "cuda" and
                                          "CUDAExecutionProvider" in self.providers else "cpu:0")
        self.shrunk_runs = 0  # runs that ended with the arena shrunk

    @staticmethod
    def _positive_int(params: dict[str, str], key: str) -> int | None:
        """Raises FailedPrecondition: the config parameter is set but is no positive integer."""
        text = params.get(key, "").strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise FailedPrecondition(f"config parameter {key!r} must be a positive integer, got {text!r}")
        return value

    @staticmethod
    def _load(path: Path | bytes, runtime: RuntimeConfig, threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # parallelism comes from parallel runs and intra-op threads
        if runtime.spinning and threads > 1:
            # spin between the parallel sections of a run (no wake-up per operator), but stop as soon
            # as the run returns: no core burnt while waiting for the next request (RuntimeConfig)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        else:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # ORT warnings about unused initializers etc. are noise here
        # weights outside the arena: otherwise they pin its first region and a shrink frees less
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
        try:
            return ort.InferenceSession(path if isinstance(path, bytes) else str(path), sess_options=opts,
                                        providers=_providers(runtime))
        except Exception as e:  # noqa: BLE001 - ORT raises several unrelated types for bad files
            where = "a cut-down copy" if isinstance(path, bytes) else path
            raise FailedPrecondition(f"{where}: cannot load ONNX graph: {str(e).splitlines()[0][:300]}") from None

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _complete_config(self) -> None:
        skip = 1 if self.batched else 0
        for kind, field, args in (("input", self.config.input, self.session.get_inputs()),
                                  ("output", self.config.output, self.session.get_outputs())):
            if len(field):
                continue
            for a in args:
                datatype = _DATATYPE_FOR_ORT.get(a.type)
                if datatype is None:
                    raise FailedPrecondition(f"{kind} {a.name!r}: graph type {a.type} is not servable")
                field.add(name=a.name, data_type=config_datatype(datatype), dims=_graph_dims(a)[skip:])

    def _check_tensors(self, kind: str, declared, graph_args) -> list[_IO]:
        by_name = {a.name: a for a in graph_args}
        checked = []
        for t in declared:
            a = by_name.get(t.name)
            if a is None:
                raise FailedPrecondition(f"config {kind} {t.name!r} is not in the graph; graph {kind}s: "
                                         f"{sorted(by_name)}")
            datatype = protocol_datatype(t.data_type)
            if _DATATYPE_FOR_ORT.get(a.type) != datatype:
                raise FailedPrecondition(f"{kind} {t.name!r}: config says {datatype}, graph has {a.type}")
            dims = list(t.dims)
            expect = ([-1] if self.batched else []) + dims
            if not _dims_compatible(expect, _graph_dims(a)):
                raise FailedPrecondition(f"{kind} {t.name!r}: config dims {expect} (batch first) do not fit "
                                         f"the graph's {_graph_dims(a)}")
            try:
                dtype = numpy_dtype(datatype)
            except InvalidInput as e:
                raise FailedPrecondition(f"{kind} {t.name!r}: {e}") from None
            checked.append(_IO(TensorSpec(t.name, datatype, tuple(dims)), dtype))
        if kind == "input":
            missing = sorted(set(by_name) - {t.name for t in declared})
            if missing:
                raise FailedPrecondition(f"graph inputs {missing} are not in the config")
        return checked

    def check_request(self, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> int:
        """Check a request's tensors against the config.

        Args:
            inputs: name -> array.
            outputs: requested output names or None.

        Returns:
            The request's batch size (1 for a model without a batch dimension).

        Raises:
            InvalidInput: missing/unknown tensor, wrong datatype or shape, batch over
                max_batch_size, image sides not multiples of spatial_multiple (names the tensor).
        """
        expected = {io.spec.name for io in self.inputs}
        unknown = sorted(set(inputs) - expected)
        missing = sorted(expected - set(inputs))
        if unknown or missing:
            raise InvalidInput(f"model {self.config.name!r} takes inputs {sorted(expected)}; "
                               f"missing {missing}, unknown {unknown}")
        batch = None
        for io in self.inputs:
            array = inputs[io.spec.name]
            name = io.spec.name
            if array.dtype != io.dtype:
                raise InvalidInput(f"input {name!r}: datatype {_datatype(array.dtype)}, expected {io.spec.datatype}")
            shape = list(array.shape)
            expect = ([-1] if self.batched else []) + list(io.spec.dims)
            if not _dims_compatible(expect, shape):
                raise InvalidInput(f"input {name!r}: shape {shape}, expected {expect} (-1 = any)")
            if self.batched:
                if not 1 <= shape[0] <= self.config.max_batch_size:
                    raise InvalidInput(f"input {name!r}: batch size {shape[0]}, expected 1.."
                                       f"{self.config.max_batch_size}")
                if batch is not None and shape[0] != batch:
                    raise InvalidInput(f"input {name!r}: batch size {shape[0]} differs from other inputs' {batch}")
                batch = shape[0]
            if self.spatial_multiple > 1 and self.layout in ("NHWC", "NCHW") and len(shape) == 4:
                hw = shape[1:3] if self.layout == "NHWC" else shape[2:4]
                if hw[0] % self.spatial_multiple or hw[1] % self.spatial_multiple:
                    raise InvalidInput(f"input {name!r}: height and width {hw} must be multiples of "
                                       f"{self.spatial_multiple}")
        if outputs is not None:
            unknown = sorted(set(outputs) - set(self.output_names))
            if unknown:
                raise InvalidInput(f"model {self.config.name!r} has no outputs {unknown}; "
                                   f"outputs: {self.output_names}")
        return batch or 1

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Execute one (batched) request; releases the GIL while ONNX Runtime computes. A run of
        more pixels than RuntimeConfig.arena_keep_pixels gives back the arena memory it grew.

        Raises:
            InvalidInput: ONNX Runtime rejected the input values (e.g. a size the graph cannot take).
        """
        shrink = request_pixels(feeds, self.layout) > self.arena_keep_pixels
        pruned = self._pruned_session(output_names) if set(output_names) < set(self.output_names) else None
        with self._running_lock:
            session = self.session if self._running == 0 or self._narrow is None else self._narrow
            self._running += 1
            self.overlapped_runs += session is not self.session
            self.shrunk_runs += shrink
        session = pruned or session
        try:
            values = session.run(output_names, feeds, self._shrink if shrink else None)
        except ort_state.InvalidArgument as e:
            raise InvalidInput(f"model {self.config.name!r} rejected the inputs: "
                               f"{str(e).splitlines()[0][:300]}") from None
        finally:
            with self._running_lock:
                self._running -= 1
        return dict(zip(output_names, values))


    def _pruned_session(self, output_names: list[str]) -> ort.InferenceSession:
        """The graph cut down to `output_names` (onnx.utils.Extractor), loaded once per output set."""
        key = frozenset(output_names)
        with self._pruned_lock:
            if key not in self._pruned:
                model = onnx.load(str(self._path))
                inputs = [i.name for i in model.graph.input
                          if i.name not in {init.name for init in model.graph.initializer}]
                cut = onnx.utils.Extractor(model).extract_model(inputs, sorted(key))
                self._pruned[key] = self._load(cut.SerializeToString(), self._runtime, self._threads)
                self.pruned_node_counts[key] = len(cut.graph.node)
                log.info("%s: a copy for outputs %s (%d of %d nodes)", self._path, sorted(key),
                         len(cut.graph.node), len(model.graph.node))
            return self._pruned[key]


def _datatype(dtype: np.dtype) -> str:
    try:
        return datatype_of(dtype)
    except InvalidInput:
        return str(dtype)
