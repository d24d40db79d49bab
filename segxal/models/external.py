"""Segmentation models the project did not write: built from an import path plus keyword
arguments (and optionally a checkpoint), seen through one wrapper that returns logits at the
input's size, and exported to ONNX so that segxal.graph.add_eem can add the EEM outputs.

    model = build_model("torchvision.models.segmentation.deeplabv3_mobilenet_v3_large",
                        {"weights": None, "weights_backbone": None, "num_classes": 4})
    model = build_model("segmentation_models_pytorch.Unet", {"encoder_name": "resnet18",
                        "encoder_weights": None, "classes": 4})
    model = build_model("transformers.SegformerForSemanticSegmentation", {"num_labels": 4, ...})
    logits = FullResLogits(model)(x)  # [B, C, H, W] whatever the model returns

A Hugging Face model class (it has `config_class`) is built from its config class with the
keyword arguments (no weights can be downloaded here); any other callable is called with them.
"""
from __future__ import annotations

import importlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segxal.data.cityscapes import MEAN, STD
from segxal.errors import InvalidInput, NotFound
from segxal.models.image_input import EvalMode, ImageInput

UNET_IMPORT_PATH = "segxal.models.unet.UNet"  # the project's own model (the default)


def import_object(import_path: str):
    """"package.module.Name" -> the object.

    Raises:
        InvalidInput: not a dotted path, or the module / name does not exist.
    """
    module_name, _, name = import_path.rpartition(".")
    if not module_name or not name:
        raise InvalidInput(f"model import path {import_path!r} must look like 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InvalidInput(f"model import path {import_path!r}: cannot import {module_name!r} ({e})") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise InvalidInput(f"model import path {import_path!r}: {module_name} has no {name!r}") from None


def build_model(import_path: str, kwargs: dict | None = None, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Build a segmentation model by import path and arguments, optionally loading a checkpoint.

    Args:
        import_path: e.g. "segmentation_models_pytorch.FPN"; a Hugging Face model class is built
            from its config class with `kwargs`.
        kwargs: keyword arguments of the constructor (or of the HF config).
        checkpoint: a state_dict file (torch.save), or a dict with a "model" / "state_dict" entry.

    Returns:
        The model (train mode, as constructors leave it).

    Raises:
        InvalidInput: the path does not import, the constructor rejects the arguments, or the
            checkpoint does not fit the model. NotFound: the checkpoint file is missing.
    """
    factory = import_object(import_path)
    kwargs = dict(kwargs or {})
    try:
        if hasattr(factory, "config_class") and hasattr(factory, "from_pretrained"):
            model = factory(factory.config_class(**kwargs))  # Hugging Face: from a config, no download
        elif import_path == UNET_IMPORT_PATH:
            from segxal.models.unet import UNetConfig
            model = factory(UNetConfig(**kwargs))
        else:
            model = factory(**kwargs)
    except TypeError as e:
        raise InvalidInput(f"{import_path}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {e}") from None
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"{import_path} built a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load weights into `model` (strict: every key must match).

    Raises:
        NotFound: no such file. InvalidInput: keys or shapes do not fit the model.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise NotFound(f"{path}: checkpoint file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise InvalidInput(f"{path}: does not fit the model: {str(e).splitlines()[0]}") from None


def logits_of(output) -> torch.Tensor:
    """The logits tensor of a segmentation model's output: a tensor, torchvision's dict ("out"),
    a Hugging Face ModelOutput (.logits) or a tuple (first element).

    Raises:
        InvalidInput: none of these.
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        return output.logits
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InvalidInput(f"cannot find the logits in a {type(output).__name__} output "
                       f"(expected a tensor, a dict with 'out', or an object with .logits)")


class FullResLogits(nn.Module):
    """Any segmentation model -> logits [B, C, H, W] at the input's size (bilinear,
    align_corners=False, when the model returns them smaller, as SegFormer's 1/4)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = logits_of(self.model(x))  # [B, C, h, w]
        if z.shape[-2:] != x.shape[-2:]:
            z = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)  # [B, C, H, W]
        return z


class _RawLogits(nn.Module):
    """The model's own logits, at the model's own resolution (what a user's export looks like)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def export_logits_onnx(model: nn.Module, path: str | os.PathLike, input_hw: tuple[int, int],
                       dynamic_batch: bool = True, uint8_input: bool = False,
                       mean=None, std=None, opset: int = 17, output_name: str = "logits") -> Path:
    """Export a model's logits to ONNX the way a team would (TorchScript exporter, opset 17).

    Args:
        model: any segmentation model (logits_of reads its output); exported in eval mode.
        path: the model.onnx to write (atomically).
        input_hw: (H, W) traced; H and W stay fixed in the graph (the model's declared input size).
        dynamic_batch: the batch dimension is dynamic ("batch"), else fixed at 1.
        uint8_input: take uint8 RGB [B, H, W, 3] and normalise in the graph with mean/std
            (our own exports); else float [B, 3, H, W], normalised by the client.
        mean, std: per-channel statistics for uint8_input (default: Cityscapes/ImageNet).
        opset: ONNX opset.
        output_name: the output tensor's name ("logits"; e.g. "predicted_depth" for a depth model).

    Returns:
        The written path.
    """
    import onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with EvalMode(model):
        module: nn.Module = _RawLogits(model)
        if uint8_input:
            module = ImageInput(module, MEAN if mean is None else mean, STD if std is None else std)
            example = torch.zeros(1, *input_hw, 3, dtype=torch.uint8)
        else:
            example = torch.zeros(1, 3, *input_hw)
        module.eval()
        dynamic = {"image": {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings: H and W are fixed on purpose
                torch.onnx.export(module, (example,), tmp, input_names=["image"], output_names=[output_name],
                                  dynamic_axes=dynamic, opset_version=opset, dynamo=False)
            onnx.checker.check_model(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


class ExternalModelConfig:
    """What rebuilds an ExternalModel: import path and arguments (stored in checkpoints)."""

    def __init__(self, import_path: str, kwargs: dict | None = None, multiple: int = 32):
        self.import_path, self.kwargs, self.multiple = import_path, dict(kwargs or {}), int(multiple)

    def to_dict(self) -> dict:
        return {"import_path": self.import_path, "kwargs": self.kwargs, "multiple": self.multiple}


class ExternalModel(nn.Module):
    """A model built by import path, trained and exported like the project's U-Net: forward(x)
    gives logits [B, C, H, W] at the input's size (FullResLogits); `cfg`, `multiple` and
    `num_classes` as the trainer and the exporter ask them of a U-Net.

    Args:
        cfg: import path, constructor arguments, and the multiple input sides must have (32 fits
            torchvision's and smp's encoders and SegFormer).
        checkpoint: optional weights for the inner model (build_model's format).

    Raises:
        InvalidInput, NotFound: as build_model; a model whose output has fewer than 2 classes.
    """

    def __init__(self, cfg: ExternalModelConfig, checkpoint: str | os.PathLike | None = None):
        super().__init__()
        self.cfg = cfg
        self.inner = build_model(cfg.import_path, cfg.kwargs, checkpoint)
        was_training = self.inner.training
        self.inner.eval()
        with torch.no_grad():  # the class count, whatever the constructor calls it
            probe = logits_of(self.inner(torch.zeros(1, 3, cfg.multiple * 2, cfg.multiple * 2)))
        self.inner.train(was_training)
        self.num_classes = int(probe.shape[1])
        if self.num_classes < 2:
            raise InvalidInput(f"{cfg.import_path} gives {self.num_classes} class(es); segmentation needs >= 2")

    @property
    def multiple(self) -> int:
        return self.cfg.multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = logits_of(self.inner(x))  # [B, C, h, w]
        if z.shape[-2:] != x.shape[-2:]:
            z = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)  # [B, C, H, W]
        return z


def num_classes_of(model: nn.Module) -> int:
    """The class count of the project's U-Net or an ExternalModel."""
    if isinstance(model, ExternalModel):
        return model.num_classes
    return int(model.cfg.num_classes)
