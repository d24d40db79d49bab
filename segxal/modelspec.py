"""What a served model takes and gives, and how a client must prepare its images: the contract
between segxal.export (writes it), the model repository (stores it in config.pbtxt `parameters`)
and the inference client (applies it). Plain data, no torch and no gRPC, so the client and the
server can import it cheaply.

Datatypes are the open inference protocol's names ("UINT8", "FP16", "FP32", ...), the same
strings `ModelInferRequest` carries; the repository maps them to config.pbtxt's TYPE_* names.

Our config.pbtxt parameters (all string values, as Triton stores them):
    model_kind        "segmentation" | "depth"
    input_layout      "NHWC" | "NCHW"  (layout of the model's image input, batch first)
    normalization     "in_graph": send uint8 RGB as is (our exports);
                      "client": send float32 (pixel * pixel_scale - mean) / std (user models)
    mean, std         "0.485,0.456,0.406" (per RGB channel)
    pixel_scale       "0.00392156862745098" (1/255)
    num_classes       "19"            (segmentation)
    spatial_multiple  "32"            (input H and W must be multiples of it)
    output_<role>     tensor name of a role, e.g. output_labels: "labels", output_inverse_depth:
                      "predicted_depth" (defaults: the role's own name)
    input_size        "256,512": the H, W the model expects; the client resizes every frame to it
                      and maps come back at the frame's size (default: the input's static dims)
    resize_mode       "stretch" (default) | "letterbox": keep the aspect ratio, pad bottom/right
                      to input_size, or with a dynamic input to the next spatial_multiple
    output_embedding  (optional role `embedding`) a frame embedding FP32 [B, D], L2-normalised,
                      for diversity selection; a model without it serves as before
    cam_layer         where the served `cam` is computed ("bottleneck", "head", "Conv 1x1 on ...");
                      "none" = the model has no CAM and is scored with EBU alone
    class_names       JSON list of class names, index = label value; read from the Triton label
                      file (`label_filename` on the labels output) by the repository reader;
                      default: the 19 Cityscapes trainId classes
    depth_convention  "inverse" (relative inverse depth, larger = nearer: MiDaS, Depth Anything)
                      | "metric" (metres; proximity exp(-D / depth_tau)); default "inverse"
    depth_tau         "20" metres (metric depth only)
A user-supplied model (a Cityscapes U-Net with float NCHW input, MiDaS, Depth Anything) is served
by writing these parameters in its config.pbtxt; nothing in code names its tensors.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from segxal.errors import InvalidInput

SEGMENTATION = "segmentation"
DEPTH = "depth"
MODEL_KINDS = (SEGMENTATION, DEPTH)

# roles of output tensors, mapped to tensor names through output_<role> parameters
SEGMENTATION_ROLES = ("labels", "ebu", "cam", "pmax", "logits", "embedding")
EMBEDDING = "embedding"  # optional role: FP32 [B, D], one L2-normalised vector per image
DEPTH_ROLES = ("inverse_depth",)  # the depth map's role, whatever its convention
DEPTH_CONVENTIONS = ("inverse", "metric")
RESIZE_MODES = ("stretch", "letterbox")
NO_CAM = "none"  # cam_layer of a model scored with EBU alone

_NP_FOR_DATATYPE = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_DATATYPE_FOR_NP = {v: k for k, v in _NP_FOR_DATATYPE.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    """Protocol datatype ("FP16") -> numpy dtype.

    Raises:
        InvalidInput: a datatype this project does not serve (BYTES, BF16, unknown names).
    """
    try:
        return _NP_FOR_DATATYPE[datatype]
    except KeyError:
        raise InvalidInput(f"unsupported datatype {datatype!r}; expected one of "
                           f"{sorted(_NP_FOR_DATATYPE)}") from None


def datatype_of(dtype: np.dtype | type) -> str:
    """numpy dtype -> protocol datatype ("FP16").

    Raises:
        InvalidInput: a dtype without a protocol name here (object, strings, complex).
    """
    try:
        return _DATATYPE_FOR_NP[np.dtype(dtype)]
    except KeyError:
        raise InvalidInput(f"unsupported numpy dtype {np.dtype(dtype)}") from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # protocol name, e.g. "UINT8"
    dims: tuple[int, ...]  # without the batch dimension; -1 = any size


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image [H, W, 3] becomes the model input (docs/design.md: the client applies
    what the config says; our own exports do it in the graph and take uint8 as is)."""
    layout: str = "NHWC"  # "NHWC" | "NCHW"
    normalization: str = "in_graph"  # "in_graph" | "client"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    pixel_scale: float = 1.0 / 255.0  # applied before mean/std: x = (pixel * scale - mean) / std

    def __post_init__(self) -> None:
        if self.layout not in ("NHWC", "NCHW"):
            raise InvalidInput(f"input_layout must be NHWC or NCHW, got {self.layout!r}")
        if self.normalization not in ("in_graph", "client"):
            raise InvalidInput(f"normalization must be in_graph or client, got {self.normalization!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise InvalidInput(f"mean and std need 3 values each, std non-zero; got {self.mean}, {self.std}")

    def apply(self, images: np.ndarray, dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
        """uint8 RGB [B, H, W, 3] -> the model input in its layout and dtype.

        Args:
            images: uint8 [B, H, W, 3].
            dtype: the input tensor's dtype; uint8 inputs are passed through untouched.

        Returns:
            [B, H, W, 3] or [B, 3, H, W], contiguous.

        Raises:
            InvalidInput: images are not uint8 [B, H, W, 3].
        """
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InvalidInput(f"images must be uint8 [B, H, W, 3], got {images.dtype} {list(images.shape)}")
        x = images
        if self.normalization == "client":
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
            x = (images.astype(np.float32) * np.float32(self.pixel_scale) - mean) / std  # [B, H, W, 3]
            x = x.astype(dtype, copy=False)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)  # [B, 3, H, W]
        return np.ascontiguousarray(x)


@dataclass(frozen=True)
class ModelSpec:
    """A model's serving contract: tensors, pre-processing, kind, and the output role names."""
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    num_classes: int | None = None
    spatial_multiple: int = 1
    output_names: dict[str, str] = field(default_factory=dict)  # role -> tensor name
    input_size: tuple[int, int] | None = None  # declared (H, W); None: the input's static dims, if any
    resize_mode: str = "stretch"  # "stretch" | "letterbox" (aspect kept, padded)
    cam_layer: str | None = None  # where `cam` comes from; NO_CAM: EBU only; None: not declared
    class_names: tuple[str, ...] | None = None  # None: Cityscapes trainIds (segxal.labels)
    depth_convention: str = "inverse"  # "inverse" | "metric" (depth models)
    depth_tau: float = 20.0  # metres, metric depth only: proximity = exp(-D / tau)
    fixed_batch: int | None = None  # max_batch_size 0: the batch size the graph was exported with

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise InvalidInput(f"model_kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if len(self.inputs) != 1:
            raise InvalidInput(f"an image model takes exactly one input, got {[t.name for t in self.inputs]}")
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidInput(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.depth_convention not in DEPTH_CONVENTIONS:
            raise InvalidInput(f"depth_convention must be one of {DEPTH_CONVENTIONS} (inverse: larger = "
                               f"nearer, MiDaS / Depth Anything; metric: metres), got {self.depth_convention!r}")
        if not (self.depth_tau > 0 and math.isfinite(self.depth_tau)):
            raise InvalidInput(f"depth_tau must be a finite number of metres > 0, got {self.depth_tau}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise InvalidInput(f"input_size must be two positive integers H,W, got {self.input_size}")
        if self.class_names is not None:
            if len(set(self.class_names)) != len(self.class_names) or not all(self.class_names):
                raise InvalidInput(f"class names must be unique and non-empty, got {list(self.class_names)}")
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise InvalidInput(f"the label file lists {len(self.class_names)} classes but the model has "
                                   f"{self.num_classes} (num_classes); one name per class, in label order")
            if len(self.class_names) > 255:
                raise InvalidInput(f"at most 255 classes fit the uint8 labels, got {len(self.class_names)}")

    @property
    def has_cam(self) -> bool:
        """True when the model serves a CAM output (else it is scored with EBU alone)."""
        return self.cam_layer != NO_CAM and self.output_name("cam") is not None

    @property
    def embedding_dim(self) -> int | None:
        """D of the `embedding` output [B, D], or None when the model serves no embedding."""
        name = self.output_name(EMBEDDING)
        if name is None:
            return None
        dims = next(t.dims for t in self.outputs if t.name == name)
        return int(dims[-1]) if dims and dims[-1] > 0 else None

    @property
    def image_input(self) -> TensorSpec:
        return self.inputs[0]

    def output_name(self, role: str) -> str | None:
        """Tensor name of an output role ("labels", "inverse_depth"), or None if the model lacks it."""
        name = self.output_names.get(role, role)
        return name if any(t.name == name for t in self.outputs) else None

    def to_parameters(self) -> dict[str, str]:
        """The config.pbtxt `parameters` describing this spec (see the module docstring)."""
        p = self.preprocessing
        params = {
            "model_kind": self.kind,
            "input_layout": p.layout,
            "normalization": p.normalization,
            "mean": ",".join(repr(float(v)) for v in p.mean),
            "std": ",".join(repr(float(v)) for v in p.std),
            "pixel_scale": repr(float(p.pixel_scale)),
            "spatial_multiple": str(self.spatial_multiple),
        }
        if self.num_classes is not None:
            params["num_classes"] = str(self.num_classes)
        for role, name in self.output_names.items():
            params[f"output_{role}"] = name
        if self.input_size is not None:
            params["input_size"] = f"{self.input_size[0]},{self.input_size[1]}"
        if self.resize_mode != "stretch":
            params["resize_mode"] = self.resize_mode
        if self.cam_layer is not None:
            params["cam_layer"] = self.cam_layer
        if self.class_names is not None:
            params["class_names"] = json.dumps(list(self.class_names))
        if self.kind == DEPTH:
            params["depth_convention"] = self.depth_convention
            if self.depth_convention == "metric":
                params["depth_tau"] = repr(float(self.depth_tau))
        return params

    @classmethod
    def from_parameters(cls, params: dict[str, str], inputs: tuple[TensorSpec, ...],
                        outputs: tuple[TensorSpec, ...], where: str = "config",
                        fixed_batch: int | None = None) -> "ModelSpec":
        """Rebuild a spec from config.pbtxt parameters and tensors.

        Args:
            params: parameter key -> string value.
            inputs, outputs: the config's tensors.
            where: named in error messages (e.g. the model name).

        Raises:
            InvalidInput: a parameter is missing or malformed (the message names it and `where`).
        """
        try:
            kind = params["model_kind"]
        except KeyError:
            raise InvalidInput(f"{where}: parameter model_kind is missing; expected one of {MODEL_KINDS}") from None

        def floats(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
            if key not in params:
                return default
            try:
                return tuple(float(v) for v in params[key].split(","))
            except ValueError:
                raise InvalidInput(f"{where}: parameter {key}={params[key]!r} is not a comma-separated "
                                   f"list of numbers") from None

        def integer(key: str, default: int | None) -> int | None:
            if key not in params:
                return default
            try:
                return int(params[key])
            except ValueError:
                raise InvalidInput(f"{where}: parameter {key}={params[key]!r} is not an integer") from None

        def names(key: str) -> tuple[str, ...] | None:
            if key not in params:
                return None
            try:
                value = json.loads(params[key])
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidInput(f"{where}: parameter {key} must be a JSON list of strings, got {params[key]!r}")
            return tuple(value)

        size = floats("input_size", ()) or None
        if size is not None and (len(size) != 2 or any(v != int(v) or v < 1 for v in size)):
            raise InvalidInput(f"{where}: parameter input_size={params['input_size']!r} must be 'H,W'")
        roles = SEGMENTATION_ROLES if kind == SEGMENTATION else DEPTH_ROLES
        try:
            pre = Preprocessing(
                layout=params.get("input_layout", "NHWC"),
                normalization=params.get("normalization", "in_graph"),
                mean=floats("mean", (0.0, 0.0, 0.0)), std=floats("std", (1.0, 1.0, 1.0)),
                pixel_scale=floats("pixel_scale", (1.0 / 255.0,))[0])
            return cls(kind=kind, inputs=inputs, outputs=outputs, preprocessing=pre,
                       num_classes=integer("num_classes", None),
                       spatial_multiple=integer("spatial_multiple", 1) or 1,
                       output_names={r: params[f"output_{r}"] for r in roles if f"output_{r}" in params},
                       input_size=None if size is None else (int(size[0]), int(size[1])),
                       resize_mode=params.get("resize_mode", "stretch"), cam_layer=params.get("cam_layer"),
                       class_names=names("class_names"),
                       depth_convention=params.get("depth_convention", "inverse"),
                       depth_tau=floats("depth_tau", (20.0,))[0], fixed_batch=fixed_batch)
        except InvalidInput as e:
            if str(e).startswith(where):
                raise
            raise InvalidInput(f"{where}: {e}") from None


@dataclass(frozen=True)
class ResizePlan:
    """How one frame size maps onto a model's input and back (segxal.modelspec.plan_resize)."""
    frame_hw: tuple[int, int]  # the frame as given
    content_hw: tuple[int, int]  # the frame's size inside the model input (after resizing)
    input_hw: tuple[int, int]  # the model input's size: content plus bottom/right padding

    def crop(self, maps: np.ndarray) -> np.ndarray:
        """[B, h, w] model outputs at any resolution proportional to input_hw -> the content part."""
        h, w = maps.shape[-2:]
        ch = max(1, round(self.content_hw[0] * h / self.input_hw[0]))
        cw = max(1, round(self.content_hw[1] * w / self.input_hw[1]))
        return maps[..., :ch, :cw]


def _model_hw(spec: ModelSpec) -> tuple[int, int]:
    """The (H, W) the model's input declares, -1 where any size goes."""
    dims = spec.image_input.dims  # without batch
    if len(dims) != 3:
        raise InvalidInput(f"image input {spec.image_input.name!r} must have 3 dims besides the batch, got {list(dims)}")
    return (dims[0], dims[1]) if spec.preprocessing.layout == "NHWC" else (dims[1], dims[2])


def plan_resize(spec: ModelSpec, frame_hw: tuple[int, int]) -> ResizePlan:
    """Where a frame goes in the model's input: the declared input_size (or the input's static
    dims) stretched, or letterboxed (aspect kept, padded bottom/right to the static dims, or to the
    next multiple of spatial_multiple when the input is dynamic); a frame with nothing declared
    goes as is.

    Args:
        spec: the model's spec.
        frame_hw: (H, W) of the frame.

    Returns:
        The plan.

    Raises:
        InvalidInput: the resulting input is not a multiple of spatial_multiple (frames as is, or a
            declared size that is not a multiple).
    """
    frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
    static = _model_hw(spec)
    target = spec.input_size or tuple(s if s > 0 else f for s, f in zip(static, frame_hw))
    m = spec.spatial_multiple
    if spec.resize_mode == "letterbox":
        s = min(target[0] / frame_hw[0], target[1] / frame_hw[1])
        content = (max(1, round(frame_hw[0] * s)), max(1, round(frame_hw[1] * s)))
        padded = tuple(-(-c // m) * m for c in content)
        input_hw = tuple(st if st > 0 else p for st, p in zip(static, padded))
    else:
        content = input_hw = (int(target[0]), int(target[1]))
    if input_hw[0] % m or input_hw[1] % m:
        raise InvalidInput(f"image height and width must be multiples of {m} for this model, got "
                           f"{list(input_hw)} (declare input_size or resize_mode letterbox in its config)")
    return ResizePlan(frame_hw, (int(content[0]), int(content[1])), (int(input_hw[0]), int(input_hw[1])))
