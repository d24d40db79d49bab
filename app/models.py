"""`segxal models add-eem`: give any segmentation ONNX the outputs the EEM service uses
(segxal.graph.add_eem), and optionally publish it into a model repository with the config the
services read (input size, normalisation, classes, where the CAM comes from).

    segxal models add-eem deeplab.onnx deeplab_eem.onnx
    segxal models add-eem deeplab.onnx deeplab_eem.onnx --repo models/ --name segmentation \\
        --labels classes.txt --normalization client --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

Prints a JSON summary: the classifier found (cam_layer, or why there is none and the model is
scored with EBU alone), whether the CAM is exact at the borders, the outputs, and the version
published.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from segxal.errors import InvalidInput
from segxal.graph.add_eem import UNCERTAINTY_AT, EEMGraphInfo, add_eem_file
from segxal.labels import read_label_file
from segxal.modelspec import NO_CAM, SEGMENTATION, ModelSpec, Preprocessing, TensorSpec, numpy_dtype, datatype_of


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInput(f"{what} must be comma-separated numbers, got {text!r}") from None
    return values


def spec_for(model_path: Path, info: EEMGraphInfo, normalization: str, mean, std,
             class_names: tuple[str, ...] | None, input_size: tuple[int, int] | None,
             resize_mode: str, spatial_multiple: int) -> ModelSpec:
    """The serving contract of a graph written by add_eem (its input as the graph declares it:
    dims -1 where dynamic; batch dynamic).

    Raises:
        InvalidInput: class names that disagree with the model's class count, bad statistics.
    """
    graph = onnx.load(str(model_path), load_external_data=False).graph
    x = graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in x.type.tensor_type.shape.dim]
    datatype = datatype_of(onnx.helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type))
    numpy_dtype(datatype)
    layout = info.input_layout
    if layout == "NHWC" and normalization == "client":
        raise InvalidInput("a uint8 NHWC input normalises in the graph; use --normalization in_graph")
    outputs = info.output_specs()  # labels UINT8, maps FP16, embedding FP32 [D]
    return ModelSpec(kind=SEGMENTATION, inputs=(TensorSpec(x.name, datatype, tuple(dims[1:])),), outputs=outputs,
                     preprocessing=Preprocessing(layout=layout, normalization=normalization, mean=mean, std=std),
                     num_classes=info.num_classes, spatial_multiple=spatial_multiple, input_size=input_size,
                     resize_mode=resize_mode, cam_layer=info.cam_layer or NO_CAM, class_names=class_names)


def _fixed_batch(model_path: Path) -> int | None:
    """The input's batch size when the graph fixes it (an export without a dynamic batch axis)."""
    x = onnx.load(str(model_path), load_external_data=False).graph.input[0]
    first = x.type.tensor_type.shape.dim[0]
    return first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None


def _run_add_eem(args: argparse.Namespace) -> int:
    from services.common.model_repository import ModelRepository, build_config
    probe = tuple(int(v) for v in _floats(args.probe_size, "--probe-size")) if args.probe_size else None
    info = add_eem_file(args.input, args.output, logits_name=args.logits, keep_logits=args.keep_logits,
                        require_cam=args.require_cam, probe_hw=probe, uncertainty_at=args.uncertainty_at)
    summary = {"output": args.output, "num_classes": info.num_classes, "cam_layer": info.cam_layer,
               "cam_exact": info.cam_exact, "ebu_only": info.cam_layer is None, "reason": info.reason or None,
               "upsampled_in_graph": info.upsampled, "uncertainty_at": info.uncertainty_at,
               "outputs": list(info.outputs), "embedding_dim": info.embedding_dim}
    if args.repo:
        if not args.name:
            raise InvalidInput("--repo needs --name (the model's folder in the repository)")
        names = read_label_file(args.labels) if args.labels else None
        size = tuple(int(v) for v in _floats(args.input_size, "--input-size")) if args.input_size else None
        spec = spec_for(Path(args.output), info, args.normalization, _floats(args.mean, "--mean"),
                        _floats(args.std, "--std"), names, size, args.resize_mode, args.spatial_multiple)
        config = build_config(args.name, spec)
        batch = _fixed_batch(Path(args.output))
        if batch is not None:  # Triton's max_batch_size 0: the dims carry the graph's own batch
            config.max_batch_size = 0
            config.ClearField("dynamic_batching")
            for t in list(config.input) + list(config.output):
                t.dims.insert(0, batch)
        repo = ModelRepository(args.repo)
        summary["version"] = repo.publish(args.name, args.output, config)
        summary["model"] = args.name
    print(json.dumps(summary))
    return 0


def register_cli(sub) -> None:
    models = sub.add_parser("models", help="bring your own models").add_subparsers(dest="models_cmd", required=True)
    p = models.add_parser("add-eem", help="add labels/ebu/cam/pmax outputs to a segmentation ONNX",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="segmentation ONNX with a logits output [B, C, h, w]")
    p.add_argument("output", help="where to write the ONNX with the EEM outputs")
    p.add_argument("--logits", help="the logits output's name (default: the only output)")
    p.add_argument("--keep-logits", action="store_true", help="keep the logits as an output named 'logits'")
    p.add_argument("--require-cam", action="store_true",
                   help="fail when no linear classifier is found (default: EBU-only outputs, said so)")
    p.add_argument("--uncertainty-at", choices=UNCERTAINTY_AT, default="input",
                   help="grid of EBU and p_max: the input's (exact, default) or the one the model computes "
                        "its class scores on, then resized (cheaper for light models; see segxal.graph.add_eem)")
    p.add_argument("--probe-size", help="H,W to measure the logits' size at when the input's H, W are dynamic")
    p.add_argument("--repo", help="publish into this model repository (Triton layout)")
    p.add_argument("--name", help="the model's name in the repository")
    p.add_argument("--labels", help="class names, one per line (Triton label file; default: Cityscapes trainIds)")
    p.add_argument("--normalization", choices=("client", "in_graph"), default="client",
                   help="who normalises the image: the client with --mean/--std, or the graph (uint8 input)")
    p.add_argument("--mean", default="0.485,0.456,0.406", help="per-channel mean, after scaling pixels to [0, 1]")
    p.add_argument("--std", default="0.229,0.224,0.225", help="per-channel std")
    p.add_argument("--input-size", help="H,W the model expects (default: the input's static dims)")
    p.add_argument("--resize-mode", choices=("stretch", "letterbox"), default="stretch",
                   help="how a frame of another size meets the model's input: stretch, or letterbox (pad, keep aspect)")
    p.add_argument("--spatial-multiple", type=int, default=1, help="input H and W must be multiples of this")
    p.set_defaults(func=_run_add_eem)
