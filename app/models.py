"""`segxal models add-eem`: give any segmentation ONNX the outputs the EEM service uses
(segxal.graph.add_eem), and optionally publish it into a model repository with the config the
services read (input size, normalisation, classes, where the CAM comes from).

    segxal models add-eem deeplab.onnx deeplab_eem.onnx
    segxal models add-eem deeplab.onnx deeplab_eem.onnx --repo models/ --name segmentation \\
        --labels classes.txt --normalization client --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

Prints a JSON summary: the classifier found (cam_layer, or why there is none and the model is
scored with EBU alone), whether the CAM is exact at the borders, the outputs, and the version
published.

A torch model (import path + keyword arguments + checkpoint, as the trainer takes it) gets the
GradCAM of a named layer with a chosen target inside its graph (segxal.graph.traced_cam; default
layer: the encoder's last stage of its family, SegFormer's stride-8 stage):

    segxal models add-eem deeplab_eem.onnx --model-import segmentation_models_pytorch.DeepLabV3Plus \
        --model-kwargs '{"encoder_name": "resnet18", "encoder_weights": null, "classes": 19}' \
        --checkpoint deeplab.pt --layer encoder.layer4 --cam-target class-balanced \
        --input-size 256,512 --repo models/ --name segmentation
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from segxal.errors import InvalidInput
from segxal.graph.add_eem import UNCERTAINTY_AT, EEMGraphInfo, add_eem_file
from segxal.graph.traced_cam import CAM_METHODS, CAM_TARGETS, DEFAULT_CAM_METHOD, DEFAULT_CAM_TARGET, DEFAULT_UNCERTAINTY_AT
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


def load_torch_model(import_path: str | None, kwargs_json: str, checkpoint: str | None):
    """The user's torch model: built by import path ("pkg.mod.Name" or "pkg.mod:Name") and keyword
    arguments (JSON), loaded from a checkpoint (its state_dict); or, from a checkpoint the project's
    trainer or `segxal train seg` wrote for a model built by import path, rebuilt from it alone.

    Raises:
        InvalidInput: bad JSON, an import path that does not build a model, a checkpoint that does
            not fit it, or neither an import path nor a project checkpoint. NotFound: no such file.
    """
    from segxal.models.external import ExternalModel, build_model
    from segxal.train import EXTERNAL, model_from_checkpoint, read_checkpoint
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--model-kwargs is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise InvalidInput(f"--model-kwargs must be a JSON object, got {kwargs_json!r}")
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        if isinstance(ckpt, dict) and ckpt.get("kind") == EXTERNAL:  # the project's own checkpoint format
            model = model_from_checkpoint(ckpt)
            assert isinstance(model, ExternalModel)
            return model.inner
    if not import_path:
        raise InvalidInput("--model-import is needed unless --checkpoint is a checkpoint of the project's trainer")
    module, sep, name = import_path.rpartition(":")
    return build_model(f"{module}.{name}" if sep else import_path, kwargs, checkpoint)


def _run_traced(args: argparse.Namespace) -> int:
    from segxal.graph.traced_cam import OUTPUTS, describe_cam, export_traced, serving_spec
    from services.common.model_repository import ModelRepository, build_config
    if args.output is not None:
        raise InvalidInput("with --model-import / --checkpoint give one path: the ONNX to write")
    if args.normalization == "client":
        raise InvalidInput("a torch model's graph normalises uint8 input itself; leave out --normalization client")
    output = args.input
    if not args.input_size:
        raise InvalidInput("--input-size H,W is needed: the size the graph is traced at")
    size = tuple(int(v) for v in _floats(args.input_size, "--input-size"))
    if len(size) != 2 or min(size) < 1:
        raise InvalidInput(f"--input-size must be two positive integers H,W, got {args.input_size!r}")
    names = read_label_file(args.labels) if args.labels else None
    mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
    model = load_torch_model(args.model_import, args.model_kwargs, args.checkpoint)
    export = export_traced(model, output, size, layer=args.layer, target=args.cam_target or DEFAULT_CAM_TARGET,
                           method=args.cam_method or DEFAULT_CAM_METHOD,
                           class_names=names, mean=mean, std=std,
                           uncertainty_at=args.uncertainty_at or DEFAULT_UNCERTAINTY_AT)
    summary = {"output": output, "num_classes": export.num_classes, "uncertainty_at": export.uncertainty_at,
               "cam_layer": describe_cam(export.layer, export.target, export.method), "layer": export.layer,
               "cam_target": export.target, "cam_method": export.method, "ebu_only": False, "outputs": list(OUTPUTS),
               "embedding_dim": export.embedding_dim, "batch": export.batch,
               "parity": {k: round(v, 6) for k, v in export.parity.items()}}
    if args.repo:
        if not args.name:
            raise InvalidInput("--repo needs --name (the model's folder in the repository)")
        spec = serving_spec(export, names, mean, std)
        summary["version"] = ModelRepository(args.repo).publish(args.name, output, build_config(args.name, spec))
        summary["model"] = args.name
    print(json.dumps(summary))
    return 0


def _run_add_eem(args: argparse.Namespace) -> int:
    from services.common.model_repository import ModelRepository, build_config
    if args.model_import or args.checkpoint:
        return _run_traced(args)
    if args.output is None:
        raise InvalidInput("give the input ONNX and the output path (or --model-import for a torch model)")
    if args.layer or args.cam_target or args.cam_method:
        raise InvalidInput("--layer, --cam-target and --cam-method need a torch model (--model-import); an ONNX graph gets "
                           "the CAM at its classifier's input")
    args.normalization = args.normalization or "client"
    probe = tuple(int(v) for v in _floats(args.probe_size, "--probe-size")) if args.probe_size else None
    info = add_eem_file(args.input, args.output, logits_name=args.logits, keep_logits=args.keep_logits,
                        require_cam=args.require_cam, probe_hw=probe, uncertainty_at=args.uncertainty_at or "input")
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
    p.add_argument("input", help="segmentation ONNX with a logits output [B, C, h, w]; with --model-import: "
                                 "where to write the ONNX")
    p.add_argument("output", nargs="?", help="where to write the ONNX with the EEM outputs")
    t = p.add_argument_group("a torch model (GradCAM at a named layer, segxal.graph.traced_cam)")
    t.add_argument("--model-import",
                   help="the model's class or factory: 'package.module.Name' or 'package.module:Name'")
    t.add_argument("--model-kwargs", default="", help="its keyword arguments as a JSON object")
    t.add_argument("--checkpoint", help="its weights (a state_dict file), or a checkpoint of the project's trainer")
    t.add_argument("--layer", help="the CAM layer: a submodule name ('encoder.layer4'; 'name:input' for its input), "
                                   "a stage rule ('last'; 'stride8': the last stage at output stride <= 8; 'default'), "
                                   "or several joined by '+' (one multi-layer CAM); default: the last encoder/backbone "
                                   "stage of the model's family, SegFormer's stride-8 stage (docs/cam.md)")
    t.add_argument("--cam-target", choices=CAM_TARGETS, default=None,
                   help=f"what the CAM explains (default {DEFAULT_CAM_TARGET}; see docs/cam.md)")
    t.add_argument("--cam-method", choices=CAM_METHODS, default=None,
                   help=f"the CAM's channel weighting: gradcam (spatially pooled gradients) or hirescam (per "
                        f"location) (default {DEFAULT_CAM_METHOD}; see docs/cam.md)")
    p.add_argument("--logits", help="the logits output's name (default: the only output)")
    p.add_argument("--keep-logits", action="store_true", help="keep the logits as an output named 'logits'")
    p.add_argument("--require-cam", action="store_true",
                   help="fail when no linear classifier is found (default: EBU-only outputs, said so)")
    p.add_argument("--uncertainty-at", choices=UNCERTAINTY_AT, default=None,
                   help="grid of EBU and p_max (and, with --model-import, of the CAM target): the input's or "
                        "the one the model computes its class scores on, then resized (cheaper, the traced CAM "
                        f"most). Default: 'input' for an ONNX graph, '{DEFAULT_UNCERTAINTY_AT}' with --model-import "
                        "(segxal.graph.add_eem, docs/cam.md)")
    p.add_argument("--probe-size", help="H,W to measure the logits' size at when the input's H, W are dynamic")
    p.add_argument("--repo", help="publish into this model repository (Triton layout)")
    p.add_argument("--name", help="the model's name in the repository")
    p.add_argument("--labels", help="class names, one per line (Triton label file; default: Cityscapes trainIds)")
    p.add_argument("--normalization", choices=("client", "in_graph"), default=None,
                   help="who normalises the image: the client with --mean/--std, or the graph (uint8 input); "
                        "default client for an ONNX graph; a torch model's graph always normalises itself")
    p.add_argument("--mean", default="0.485,0.456,0.406", help="per-channel mean, after scaling pixels to [0, 1]")
    p.add_argument("--std", default="0.229,0.224,0.225", help="per-channel std")
    p.add_argument("--input-size", help="H,W the model expects (default: the input's static dims); "
                                        "with --model-import the size traced at (required)")
    p.add_argument("--resize-mode", choices=("stretch", "letterbox"), default="stretch",
                   help="how a frame of another size meets the model's input: stretch, or letterbox (pad, keep aspect)")
    p.add_argument("--spatial-multiple", type=int, default=1, help="input H and W must be multiples of this")
    p.set_defaults(func=_run_add_eem)
