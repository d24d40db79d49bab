"""The one place that converts between open-inference-protocol messages (tritonclient's generated
`service_pb2`) and the core's plain objects (services.inference.api): infer requests and responses
(raw and typed tensor contents), model metadata, repository index, statistics. The servicer calls
these and nothing else touches `raw_input_contents` / `raw_output_contents`.
"""
from __future__ import annotations

import math
import time

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from segxal.errors import InvalidInput, ResourceExhausted
from segxal.modelspec import TensorSpec, datatype_of, numpy_dtype
from services.inference.api import InferRequest, InferResult, ModelStatus
from services.inference.batcher import BatcherStats

# typed `contents` field for each datatype (FP16/BF16 have none: raw only, as in the protocol)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as an enormous time remaining


def _deadline(time_remaining_s: float | None, timeout_us: int) -> float | None:
    now = time.monotonic()
    deadlines = []
    if time_remaining_s is not None and time_remaining_s < _NO_DEADLINE_S:
        deadlines.append(now + time_remaining_s)
    if timeout_us > 0:  # Triton's per-request "timeout" parameter, in microseconds
        deadlines.append(now + timeout_us / 1e6)
    return min(deadlines) if deadlines else None


def _typed_values(name: str, datatype: str, dtype: np.dtype, field: str, values) -> np.ndarray:
    """Typed contents as `dtype`, every value checked to fit it (int_contents carries INT8 and
    INT16 as int32, uint_contents carries UINT8 and UINT16 as uint32: a 300 is not a UINT8)."""
    if dtype.kind in "iu":
        wide = np.asarray(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            bad = wide[(wide < info.min) | (wide > info.max)][0]
            raise InvalidInput(f"input {name!r}: value {int(bad)} in contents.{field} is out of range for "
                               f"{datatype} ({info.min}..{info.max})")
        return wide.astype(dtype)
    return np.asarray(values, dtype=dtype)


def _decode_tensor(tensor, raw: bytes | None, max_tensor_bytes: int) -> np.ndarray:
    name = tensor.name
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} has negative dimensions")
    try:
        dtype = numpy_dtype(tensor.datatype)
    except InvalidInput as e:
        raise InvalidInput(f"input {name!r}: {e}") from None
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > max_tensor_bytes:
        raise ResourceExhausted(f"input {name!r}: {nbytes} bytes ({tensor.datatype} {shape}) exceeds the "
                                f"limit of {max_tensor_bytes} bytes per tensor")
    if raw is not None:
        if tensor.contents.ListFields():
            raise InvalidInput(f"input {name!r}: both raw_input_contents and typed contents were sent; "
                               f"the protocol allows one or the other")
        if len(raw) != nbytes:
            raise InvalidInput(f"input {name!r}: {len(raw)} bytes of raw content, expected {nbytes} "
                               f"for {tensor.datatype} {shape}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)  # zero-copy view on the message bytes
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: {tensor.datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: {len(values)} values in contents.{field}, expected {count} "
                           f"for shape {shape}")
    return _typed_values(name, tensor.datatype, dtype, field, values).reshape(shape)


def request_from_proto(msg: pb.ModelInferRequest, max_tensor_bytes: int,
                       time_remaining_s: float | None = None) -> InferRequest:
    """Decode a ModelInferRequest.

    Raw contents become zero-copy numpy views; typed contents are copied. Sizes are checked from
    the declared shapes before anything is decoded.

    Args:
        msg: the request.
        max_tensor_bytes: per-tensor limit.
        time_remaining_s: the RPC's remaining deadline (context.time_remaining()).

    Returns:
        The decoded request.

    Raises:
        InvalidInput: bad version string, duplicate input, byte count or value count not matching
            the shape, unsupported datatype, raw and typed contents mixed up (message names the tensor).
        ResourceExhausted: a tensor over max_tensor_bytes.
    """
    version = parse_version(msg.model_version)
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs; when raw contents "
                           f"are used, every input needs one, in order")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} appears twice")
        inputs[tensor.name] = _decode_tensor(tensor, raw[i] if raw else None, max_tensor_bytes)
    outputs = [o.name for o in msg.outputs] or None
    timeout_us = msg.parameters["timeout"].int64_param if "timeout" in msg.parameters else 0
    return InferRequest(model=msg.model_name, version=version, inputs=inputs, outputs=outputs,
                        deadline=_deadline(time_remaining_s, timeout_us), request_id=msg.id)


def response_to_proto(result: InferResult) -> pb.ModelInferResponse:
    """Encode a result; every output goes in raw_output_contents (the protocol's fast path)."""
    response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version),
                                     id=result.request_id)
    for name, array in result.outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=list(array.shape))
        # the one unavoidable copy: protobuf bytes fields take bytes
        response.raw_output_contents.append(array.tobytes())
    return response


def _tensor_metadata(t: TensorSpec, batched: bool) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=t.name, datatype=t.datatype, shape=([-1] if batched else []) + list(t.dims))


def metadata_to_proto(name: str, versions: list[int], platform: str, inputs: list[TensorSpec],
                      outputs: list[TensorSpec], batched: bool) -> pb.ModelMetadataResponse:
    """ModelMetadataResponse; shapes carry the batch dimension as -1 when the model batches."""
    return pb.ModelMetadataResponse(
        name=name, versions=[str(v) for v in versions], platform=platform,
        inputs=[_tensor_metadata(t, batched) for t in inputs],
        outputs=[_tensor_metadata(t, batched) for t in outputs])


def repository_index_to_proto(rows: list[ModelStatus]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[
        pb.RepositoryIndexResponse.ModelIndex(name=r.name, version=r.version, state=r.state, reason=r.reason)
        for r in rows])


def parse_version(version: str) -> int | None:
    """'' -> None (policy), '3' -> 3.

    Raises:
        InvalidInput: not a positive integer.
    """
    if not version:
        return None
    if not version.isdigit() or int(version) <= 0:
        raise InvalidInput(f"model version must be a positive integer or empty, got {version!r}")
    return int(version)


def statistics_to_proto(rows: list[tuple[str, int, BatcherStats]]) -> pb.ModelStatisticsResponse:
    """ModelStatisticsResponse from (model, version, BatcherStats) rows (Triton's counters)."""
    response = pb.ModelStatisticsResponse()
    for name, version, st in rows:
        m = response.model_stats.add(name=name, version=str(version), last_inference=st.last_inference_ms,
                                     inference_count=st.inference_count, execution_count=st.execution_count)
        m.inference_stats.success.count, m.inference_stats.success.ns = st.success_count, st.success_ns
        m.inference_stats.fail.count, m.inference_stats.fail.ns = st.fail_count, st.fail_ns
        m.inference_stats.queue.count, m.inference_stats.queue.ns = st.queue_count, st.queue_ns
        m.inference_stats.compute_infer.count, m.inference_stats.compute_infer.ns = st.compute_count, st.compute_ns
        for rows_in_batch, (count, ns) in sorted(st.batches.items()):
            b = m.batch_stats.add(batch_size=rows_in_batch)
            b.compute_infer.count, b.compute_infer.ns = count, ns
    return response
