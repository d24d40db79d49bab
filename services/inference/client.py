"""The one inference client of the project (EEM scoring, trainer checks, benchmarks), over the open
inference protocol with `tritonclient`, so the same code talks to our ONNX Runtime server and to
Triton.

    with InferenceClient("localhost:8001") as client:
        seg = client.infer_segmentation(images)          # images uint8 [B, H, W, 3]
        seg["labels"], seg["ebu"], seg["cam"], seg["pmax"], seg["model_version"]
        inverse_depth, version = client.infer_depth(images)

    async with AsyncInferenceClient("localhost:8001") as client:
        seg = await client.infer_segmentation(images)

Pre-processing comes from the model's config.pbtxt parameters (segxal.modelspec), fetched once per
model and cached: our exports take uint8 RGB NHWC as is; a user model (float NCHW, its own mean/std,
a fixed input size) gets its input prepared here and its outputs resized back to the image size.
Channel options (message size, keepalive, TLS, token) come from services.common.channel.
Errors are our exceptions (segxal.errors), mapped from the status code at this one edge.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from segxal.errors import InvalidInput
from segxal.resize import resize_image, resize_map, resize_nearest
from segxal.modelspec import DEPTH, SEGMENTATION, ModelSpec, ResizePlan, datatype_of, numpy_dtype, plan_resize
from services.common.channel import ChannelConfig, channel_credentials, channel_options, resolve_target
from services.common.errors import error_from_status
from services.common.model_repository import spec_from_config

DEFAULT_SEGMENTATION_MODEL = "segmentation"
DEFAULT_DEPTH_MODEL = "depth"


@dataclass
class InferOutputs:
    """One inference response.

    Attributes:
        tensors: output name -> array (read-only views on the response bytes; copy to modify).
        model_name: the model that answered.
        model_version: the version that answered (a string, as in the protocol).
    """
    tensors: dict[str, np.ndarray]
    model_name: str
    model_version: str


@contextmanager
def _our_errors() -> Iterator[None]:
    """tritonclient's exceptions -> ours (the status code survives as the exception type)."""
    try:
        yield
    except InferenceServerException as e:
        status = e.status() or ""  # "StatusCode.NOT_FOUND"; None for client-side checks
        code = getattr(grpc.StatusCode, status.rsplit(".", 1)[-1], None) if status else None
        raise error_from_status(code, e.message() or str(e)) from None


def _client_kwargs(target: str, channel_cfg: ChannelConfig | None) -> dict:
    cfg = channel_cfg or ChannelConfig()
    return dict(url=resolve_target(target), creds=channel_credentials(cfg),
                channel_args=channel_options(target, cfg))


def _make_inputs(inputs: dict[str, np.ndarray], infer_input_cls) -> list:
    made = []
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        inp = infer_input_cls(name, list(array.shape), datatype_of(array.dtype))
        with _our_errors():
            inp.set_data_from_numpy(array)
        made.append(inp)
    return made


def _make_outputs(outputs: list[str] | None, requested_output_cls) -> list | None:
    return None if outputs is None else [requested_output_cls(name) for name in outputs]


def _read_result(result, model: str) -> InferOutputs:
    response = result.get_response()
    return InferOutputs(tensors={o.name: result.as_numpy(o.name) for o in response.outputs},
                        model_name=response.model_name or model,
                        model_version=response.model_version)


# ---- pre- and post-processing from the model's spec (shared by the sync and async clients) ----

def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise InvalidInput(f"images must be uint8 RGB [B, H, W, 3], got {got}")


def _resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([resize_image(im, size) for im in images])  # [B, h, w, 3]


def _resize_maps(maps: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """[B, h, w] -> [B, H, W]: labels nearest, continuous maps bilinear (segxal.resize)."""
    if maps.shape[1:] == tuple(size):
        return maps
    resize = resize_nearest if nearest else resize_map
    return np.stack([resize(m, size) for m in maps])


def _letterbox(images: np.ndarray, plan: ResizePlan) -> np.ndarray:
    """Resize to the plan's content size, then pad bottom/right with zeros to its input size."""
    if images.shape[1:3] != plan.content_hw:
        images = _resize_images(images, plan.content_hw)
    if plan.content_hw == plan.input_hw:
        return images
    out = np.zeros((images.shape[0], *plan.input_hw, 3), dtype=np.uint8)  # [B, h, w, 3]
    out[:, :plan.content_hw[0], :plan.content_hw[1]] = images
    return out


def _prepare_images(spec: ModelSpec, images: np.ndarray) -> tuple[dict[str, np.ndarray], ResizePlan]:
    """Images -> the model's input dict, and the plan that brings outputs back to the frame size
    (segxal.modelspec.plan_resize: the model's declared input size, stretched or letterboxed)."""
    _check_images(images)
    plan = plan_resize(spec, images.shape[1:3])
    if spec.fixed_batch is not None and images.shape[0] != spec.fixed_batch:
        raise InvalidInput(f"this model takes batches of exactly {spec.fixed_batch} (max_batch_size 0), "
                           f"got {images.shape[0]} images")
    x = spec.preprocessing.apply(_letterbox(images, plan), numpy_dtype(spec.image_input.datatype))
    return {spec.image_input.name: x}, plan


def _restore(maps: np.ndarray, plan: ResizePlan, nearest: bool) -> np.ndarray:
    """Model output maps [B, h, w] -> [B, H, W] of the frame: padding cropped, then resized."""
    return _resize_maps(plan.crop(maps), plan.frame_hw, nearest)


def _segmentation_outputs(spec: ModelSpec, with_logits: bool, with_cam: bool = True) -> list[str]:
    # Without `cam` requested, ONNX Runtime runs only the nodes the other outputs need: the CAM's
    # backward half of the graph is not executed (a cycle with beta = 0 does not pay for it).
    roles = ("labels", "ebu", "cam", "pmax", "embedding") if with_cam else ("labels", "ebu", "pmax", "embedding")
    names = [spec.output_name(r) for r in roles]
    if with_logits or spec.output_name("labels") is None:
        names.append(spec.output_name("logits"))
    names = [n for n in names if n is not None]
    if not names:
        raise InvalidInput(f"segmentation model has none of the outputs labels/ebu/cam/pmax/logits; "
                           f"its outputs are {[t.name for t in spec.outputs]} (map them with output_<role> "
                           f"parameters in config.pbtxt)")
    return names


def _from_logits(logits: np.ndarray) -> dict[str, np.ndarray]:
    """labels, EBU and p_max from logits [B, C, H, W], for models without the compact outputs
    (same definitions as segxal.eem.ebu: entropy of softmax / log C)."""
    z = logits.astype(np.float32)
    z = z - z.max(1, keepdims=True)  # [B, C, H, W]
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))  # [B, C, H, W]
    p = np.exp(log_p)
    ebu = np.clip(-(p * log_p).sum(1) / np.log(z.shape[1]), 0.0, 1.0)  # [B, H, W]
    return {"labels": logits.argmax(1).astype(np.uint8), "ebu": ebu.astype(np.float16),
            "pmax": p.max(1).astype(np.float16)}


def _segmentation_result(spec: ModelSpec, out: InferOutputs, plan: ResizePlan, with_logits: bool) -> dict:
    t = out.tensors
    get = lambda role: t.get(spec.output_name(role)) if spec.output_name(role) else None  # noqa: E731
    maps = {r: get(r) for r in ("labels", "ebu", "cam", "pmax")}
    logits = get("logits")
    if maps["labels"] is None and logits is not None:
        derived = _from_logits(logits)
        maps.update({k: v for k, v in derived.items() if maps[k] is None})
    result = {r: (None if m is None else _restore(m, plan, nearest=(r == "labels"))) for r, m in maps.items()}
    if with_logits:
        result["logits"] = logits
    emb = get("embedding")  # [B, D] per image: no resize to undo
    result["embedding"] = None if emb is None else emb.astype(np.float32, copy=False)
    result["model_version"] = out.model_version
    return result


def _depth_output(spec: ModelSpec) -> str:
    name = spec.output_name("inverse_depth")
    if name is None:
        raise InvalidInput(f"depth model has no output for inverse_depth; its outputs are "
                           f"{[t.name for t in spec.outputs]} (set parameter output_inverse_depth)")
    return name


def _depth_result(spec: ModelSpec, out: InferOutputs, plan: ResizePlan) -> tuple[np.ndarray, str]:
    d = out.tensors[_depth_output(spec)]
    if d.ndim == 4 and d.shape[1] == 1:
        d = d[:, 0]  # [B, 1, H, W] -> [B, H, W], MiDaS style
    if d.ndim != 3:
        raise InvalidInput(f"depth output {_depth_output(spec)!r} must be [B, H, W] or [B, 1, H, W], "
                           f"got shape {list(d.shape)}")
    return _restore(d, plan, nearest=False), out.model_version


def _check_kind(spec: ModelSpec, model: str, kind: str) -> None:
    if spec.kind != kind:
        raise InvalidInput(f"model {model!r} is a {spec.kind} model, not {kind}")


def _init_client(client, target: str, channel_cfg: ChannelConfig | None, segmentation_model: str,
                 depth_model: str, timeout_s: float | None) -> None:
    """The settings both clients hold, and their tritonclient client (sync or aio: the class's own)."""
    client.target = target
    client.segmentation_model = segmentation_model
    client.depth_model = depth_model
    client.timeout_s = timeout_s
    client._client = type(client)._triton_client(**_client_kwargs(target, channel_cfg))
    client._specs = {}


class InferenceClient:
    """Synchronous client (thread-safe: one channel, calls from many threads).

    Args:
        target: "host:port", "h1:p1,h2:p2" or "dns:///svc:port" (services.common.channel).
        channel_cfg: message size, keepalive, TLS, token; defaults as ChannelConfig.
        segmentation_model: model name used by infer_segmentation.
        depth_model: model name used by infer_depth.
        timeout_s: default deadline of each call (None: no deadline).
    """

    _triton_client = triton_grpc.InferenceServerClient

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *,
                 segmentation_model: str = DEFAULT_SEGMENTATION_MODEL,
                 depth_model: str = DEFAULT_DEPTH_MODEL, timeout_s: float | None = None):
        _init_client(self, target, channel_cfg, segmentation_model, depth_model, timeout_s)
        self._lock = threading.Lock()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_ready(self, model: str | None = None, version: str = "") -> bool:
        """Server readiness, or one model's (version's) readiness.

        Raises:
            NotReady: the server cannot be reached.
        """
        with _our_errors():
            if model is None:
                return self._client.is_server_ready(client_timeout=self.timeout_s)
            return self._client.is_model_ready(model, version, client_timeout=self.timeout_s)

    def model_spec(self, model: str, refresh: bool = False, timeout_s: float | None = None) -> ModelSpec:
        """The model's serving contract from its config (fetched once, then cached).
        `timeout_s`: deadline of the fetch (None: the client's default).

        Raises:
            NotFound: no such model. InvalidInput: its config lacks our parameters.
        """
        with self._lock:
            spec = self._specs.get(model)
        if spec is None or refresh:
            with _our_errors():
                config = self._client.get_model_config(
                    model, client_timeout=self.timeout_s if timeout_s is None else timeout_s).config
            spec = spec_from_config(config)
            with self._lock:
                self._specs[model] = spec
        return spec

    def infer(self, model: str, inputs: dict[str, np.ndarray], *, outputs: list[str] | None = None,
              version: str = "", timeout_s: float | None = None) -> InferOutputs:
        """Run a model on raw input tensors (no pre-processing).

        Args:
            model: model name.
            inputs: input name -> array (batch first).
            outputs: output names to return; None returns all.
            version: "" for the server's policy (latest), or a pinned version such as "3".
            timeout_s: deadline of this call; None uses the client's default.

        Returns:
            InferOutputs with the tensors and the version that answered.

        Raises:
            NotFound: unknown model or version. InvalidInput: wrong names, shapes or dtypes.
            ResourceExhausted: server queue full or tensor too large. NotReady: server down or
            deadline exceeded.
        """
        made = _make_inputs(inputs, triton_grpc.InferInput)
        with _our_errors():
            result = self._client.infer(
                model, made, model_version=version,
                outputs=_make_outputs(outputs, triton_grpc.InferRequestedOutput),
                client_timeout=self.timeout_s if timeout_s is None else timeout_s)
        return _read_result(result, model)

    def infer_segmentation(self, images: np.ndarray, *, version: str = "", with_logits: bool = False,
                           with_cam: bool = True, timeout_s: float | None = None) -> dict:
        """Segment a batch of images.

        Args:
            images: uint8 RGB [B, H, W, 3].
            version: "" (latest) or a pinned version.
            with_logits: also return logits [B, C, H, W] (only if the model exports them; large).
            with_cam: ask for the CAM; False leaves it out of the request (cam None), and the
                server does not compute it.
            timeout_s: deadline of this call.

        Returns:
            dict with labels uint8 [B, H, W], ebu, cam, pmax float16 [B, H, W] (cam is None for a
            model without a CAM output; ebu/pmax are derived from logits when the model gives only
            logits), "embedding" float32 [B, D] (None for a model without one), "logits" when
            asked, and "model_version" (str).

        Raises:
            InvalidInput: images not uint8 [B, H, W, 3], or sizes the model cannot take; and as infer.
        """
        spec = self.model_spec(self.segmentation_model, timeout_s=timeout_s)  # the caller's deadline too
        _check_kind(spec, self.segmentation_model, SEGMENTATION)
        inputs, plan = _prepare_images(spec, images)
        out = self.infer(self.segmentation_model, inputs, outputs=_segmentation_outputs(spec, with_logits, with_cam),
                         version=version, timeout_s=timeout_s)
        return _segmentation_result(spec, out, plan, with_logits)

    def infer_depth(self, images: np.ndarray, *, version: str = "",
                    timeout_s: float | None = None) -> tuple[np.ndarray, str]:
        """Relative inverse depth (larger = nearer) of a batch of images.

        Args:
            images: uint8 RGB [B, H, W, 3].
            version: "" (latest) or a pinned version.
            timeout_s: deadline of this call.

        Returns:
            (inverse depth [B, H, W] in the model's dtype, model_version).

        Raises:
            As infer_segmentation.
        """
        spec = self.model_spec(self.depth_model, timeout_s=timeout_s)  # the caller's deadline too
        _check_kind(spec, self.depth_model, DEPTH)
        inputs, plan = _prepare_images(spec, images)
        out = self.infer(self.depth_model, inputs, outputs=[_depth_output(spec)],
                         version=version, timeout_s=timeout_s)
        return _depth_result(spec, out, plan)

    def load_model(self, model: str) -> None:
        """Ask the server to (re)load a model from its repository (the newest versions by policy).

        Raises:
            NotFound: not in the repository. FailedPrecondition / InvalidInput: the load failed
            (the previously loaded versions keep serving).
        """
        with _our_errors():
            self._client.load_model(model, client_timeout=self.timeout_s)
        with self._lock:
            self._specs.pop(model, None)

    def unload_model(self, model: str) -> None:
        """Ask the server to stop serving a model (in-flight requests finish)."""
        with _our_errors():
            self._client.unload_model(model, client_timeout=self.timeout_s)
        with self._lock:
            self._specs.pop(model, None)


class AsyncInferenceClient:
    """asyncio twin of InferenceClient (same arguments, same results, awaitable methods)."""

    _triton_client = triton_aio.InferenceServerClient

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *,
                 segmentation_model: str = DEFAULT_SEGMENTATION_MODEL,
                 depth_model: str = DEFAULT_DEPTH_MODEL, timeout_s: float | None = None):
        _init_client(self, target, channel_cfg, segmentation_model, depth_model, timeout_s)

    async def __aenter__(self) -> "AsyncInferenceClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self, model: str | None = None, version: str = "") -> bool:
        """As InferenceClient.is_ready."""
        with _our_errors():
            if model is None:
                return await self._client.is_server_ready(client_timeout=self.timeout_s)
            return await self._client.is_model_ready(model, version, client_timeout=self.timeout_s)

    async def model_spec(self, model: str, refresh: bool = False) -> ModelSpec:
        """As InferenceClient.model_spec."""
        spec = self._specs.get(model)
        if spec is None or refresh:
            with _our_errors():
                config = (await self._client.get_model_config(model, client_timeout=self.timeout_s)).config
            spec = self._specs[model] = spec_from_config(config)
        return spec

    async def infer(self, model: str, inputs: dict[str, np.ndarray], *, outputs: list[str] | None = None,
                    version: str = "", timeout_s: float | None = None) -> InferOutputs:
        """As InferenceClient.infer."""
        made = _make_inputs(inputs, triton_aio.InferInput)
        with _our_errors():
            result = await self._client.infer(
                model, made, model_version=version,
                outputs=_make_outputs(outputs, triton_aio.InferRequestedOutput),
                client_timeout=self.timeout_s if timeout_s is None else timeout_s)
        return _read_result(result, model)

    async def infer_segmentation(self, images: np.ndarray, *, version: str = "", with_logits: bool = False,
                                 with_cam: bool = True, timeout_s: float | None = None) -> dict:
        """As InferenceClient.infer_segmentation."""
        spec = await self.model_spec(self.segmentation_model)
        _check_kind(spec, self.segmentation_model, SEGMENTATION)
        inputs, plan = _prepare_images(spec, images)
        out = await self.infer(self.segmentation_model, inputs,
                               outputs=_segmentation_outputs(spec, with_logits, with_cam),
                               version=version, timeout_s=timeout_s)
        return _segmentation_result(spec, out, plan, with_logits)

    async def infer_depth(self, images: np.ndarray, *, version: str = "",
                          timeout_s: float | None = None) -> tuple[np.ndarray, str]:
        """As InferenceClient.infer_depth."""
        spec = await self.model_spec(self.depth_model)
        _check_kind(spec, self.depth_model, DEPTH)
        inputs, plan = _prepare_images(spec, images)
        out = await self.infer(self.depth_model, inputs, outputs=[_depth_output(spec)],
                               version=version, timeout_s=timeout_s)
        return _depth_result(spec, out, plan)

    async def load_model(self, model: str) -> None:
        """As InferenceClient.load_model."""
        with _our_errors():
            await self._client.load_model(model, client_timeout=self.timeout_s)
        self._specs.pop(model, None)

    async def unload_model(self, model: str) -> None:
        """As InferenceClient.unload_model."""
        with _our_errors():
            await self._client.unload_model(model, client_timeout=self.timeout_s)
        self._specs.pop(model, None)
