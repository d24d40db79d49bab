"""GradCAM at a named layer of any torch model, inside the exported graph (segxal.graph.traced_cam).

Three architectures no one here wrote (smp DeepLabV3+ and Unet on resnet18, torchvision LR-ASPP),
each exported with a different CAM target, published with a five-class label file, served by the
project's inference server and scored through the real EEM service: the served `cam` equals
pytorch-grad-cam's GradCAM at the same layer with the same target (its scaling) within 1e-3.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pytorch_grad_cam import GradCAM, HiResCAM

from segxal import imageio
from segxal.data.cityscapes import MEAN, STD
from segxal.errors import InvalidInput
from segxal.export import ExportConfig, export_depth
from segxal.eem.ebu import prediction_statistics
from segxal.graph.traced_cam import (CAM_METHODS, CAM_TARGETS, DEFAULT_UNCERTAINTY_AT, METADATA_CAM_LAYER, METADATA_CAM_METHOD,
                                     METADATA_CAM_TARGET, METADATA_UNCERTAINTY_AT,
                                     ScoresOf, TracedExplainer,
                                     as_grad_cam_target, capture_activation, default_layer, describe_cam,
                                     expand_layers, export_traced, feature_stages, make_target, resolve_layer,
                                     serving_spec, split_layers)
from segxal.models import zoo
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.external import FullResLogits, build_model
from services.common.model_repository import ModelRepository, build_config, spec_from_config
from services.common.server import ServerConfig
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer
from tests.zoo_support import H, NUM_CLASSES, W

CLASS_NAMES = ("road", "car", "person", "tree", "sky")  # a non-Cityscapes taxonomy with two object classes
CAM_TOL = 1e-3
# architecture -> (the target it is exported with, the default layer expected, the CAM method)
SERVED = {"smp_deeplabv3plus": ("class-balanced", "encoder.layer4", "gradcam"),
          "lraspp_mobilenet_v3_large": ("class-agnostic", "backbone.16", "gradcam"),
          "smp_unet": ("objects", "encoder.layer4", "hirescam")}
REFERENCE = {"gradcam": GradCAM, "hirescam": HiResCAM}  # pytorch-grad-cam's class of each CAM method


def _model(name: str) -> torch.nn.Module:
    """A random-weight model whose classifier is re-initialised N(0, 1), so that several classes
    are predicted (segxal.models.zoo does this for its architectures)."""
    if name in zoo.entries(NUM_CLASSES):
        return zoo.build(name, NUM_CLASSES)[0]
    torch.manual_seed(0)
    model = build_model("segmentation_models_pytorch.DeepLabV3Plus",
                        {"encoder_name": "resnet18", "encoder_weights": None, "classes": NUM_CLASSES})
    torch.nn.init.normal_(model.segmentation_head[0].weight, std=1.0)
    torch.nn.init.zeros_(model.segmentation_head[0].bias)
    return model.eval()


def _frame() -> np.ndarray:
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))  # uint8 [H, W, 3]


def _normalised(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, H, W]
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _grad_cam(model, layer: str, target: str, image: np.ndarray, scores=None, method: str = "gradcam") -> np.ndarray:
    """pytorch-grad-cam's GradCAM (or the class of `method`) of one uint8 image [H, W, 3] at `layer`
    ("a+b": both as its target layers) with `target`: [H, W], the target on the logits at the input's
    size, or on what the module `scores` gives."""
    modules = [resolve_layer(model, name)[0] for name in split_layers(layer)]
    with REFERENCE[method](model=(scores or FullResLogits(model)).eval(), target_layers=modules) as cam:
        return cam(input_tensor=_normalised(image), targets=[as_grad_cam_target(make_target(target, CLASS_NAMES))])[0]


def _default_scores(model, layer: str) -> ScoresOf:
    """The logits an export with the default grid defines its target on (pytorch-grad-cam's model)."""
    return ScoresOf(TracedExplainer(model, layer, make_target("ebu-gradient"), MEAN, STD, DEFAULT_UNCERTAINTY_AT))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("traced")
    repo = ModelRepository(root / "repo")
    exports = {}
    for name, (target, _, method) in SERVED.items():
        model = _model(name)
        result = export_traced(model, root / name / "model.onnx", (H, W), target=target, class_names=CLASS_NAMES,
                               method=method)
        repo.publish(name, result.path, build_config(name, serving_spec(result, CLASS_NAMES)))
        exports[name] = (model, result)
    torch.manual_seed(1)
    depth = export_depth(DepthNet(DepthConfig(width=4, depth=2)), root / "depth" / "model.onnx",
                         ExportConfig(trace_hw=(H, W)))
    repo.publish("depth", depth.path, build_config("depth", depth.spec))
    frames = root / "frames"
    imageio.write_png(frames / "frame.png", _frame())
    server = InferenceServer(InferenceServerConfig(
        repository=str(repo.root), server=ServerConfig(address="127.0.0.1:0", max_workers=8, grace_s=2.0),
        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0))
    server.start()
    yield {"server": server, "exports": exports, "frames": frames, "repo": repo}
    server.stop(2.0)


def _score(served, seg_model: str):
    eem = EemServer(EemServiceConfig(seg_target=served["server"].target, depth_target=served["server"].target,
                                     storage_roots=[str(served["frames"])], seg_model=seg_model,
                                     server=ServerConfig(address="127.0.0.1:0", grace_s=2.0), health_poll_s=0.1,
                                     pipeline=PipelineConfig(max_concurrency=1)))
    eem.start()
    try:
        with EemClient(eem.target, timeout_s=60) as client:
            client.wait_until_serving(30)
            return client.score(str(served["frames"] / "frame.png"), ScoreOptions(
                maps=("ebu", "cam", "eem"), map_bits=16, regions=True, labels=True)).raise_for_error()
    finally:
        eem.stop(2.0)


@pytest.mark.parametrize("name", SERVED)
def test_served_cam_equals_pytorch_grad_cam_at_the_named_layer(name, served):
    model, export = served["exports"][name]
    target, layer, method = SERVED[name]
    assert export.layer == layer and export.target == target and export.method == method
    result = _score(served, name)
    image = _frame()
    ref = _grad_cam(model, layer, target, image, scores=_default_scores(model, layer), method=method)  # [H, W]
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        logits = FullResLogits(model)((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert result.cam_layer == describe_cam(layer, target, method) and not result.ebu_only
    assert np.mean(result.labels() == logits.argmax(1)[0].numpy()) > 0.999
    assert len(np.unique(result.labels())) > 1  # a non-trivial prediction, else the check is weak
    assert ref.max() > 0.99 and ref.std() > 0.05  # a live reference CAM
    assert np.abs(result.map("cam") - ref).max() < CAM_TOL
    assert result.regions and {r.class_name for r in result.regions} <= set(CLASS_NAMES)


def test_export_records_layer_and_target_in_onnx_metadata_and_config(served):
    _, export = served["exports"]["smp_deeplabv3plus"]
    props = {p.key: p.value for p in onnx.load(str(export.path)).metadata_props}
    assert props[METADATA_CAM_LAYER] == "encoder.layer4" and props[METADATA_CAM_TARGET] == "class-balanced"
    spec = spec_from_config(served["repo"].read_config("smp_deeplabv3plus"))
    assert spec.cam_layer == "encoder.layer4 (class-balanced)" and spec.has_cam
    assert spec.fixed_batch == 1 and spec.input_size == (H, W) and spec.class_names == CLASS_NAMES
    assert spec.embedding_dim == 512  # resnet18's last stage
    _, other = served["exports"]["smp_unet"]  # exported with HiResCAM
    props = {p.key: p.value for p in onnx.load(str(other.path)).metadata_props}
    assert props[METADATA_CAM_METHOD] == "hirescam"
    assert spec_from_config(served["repo"].read_config("smp_unet")).cam_layer == "encoder.layer4 (objects, hirescam)"


def test_embedding_is_the_normalised_pooled_activation_of_the_cam_layer(served):
    model, export = served["exports"]["smp_unet"]
    image = _frame()[None]
    (embedding,) = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"]).run(
        ["embedding"], {"image": image})
    module, of_input = resolve_layer(model, export.layer)
    store: dict = {}
    x = (torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    with capture_activation(module, of_input, store), torch.no_grad():
        model(x)
    pooled = store["a"].mean((2, 3))  # [1, K]
    assert embedding.dtype == np.float32 and embedding.shape == (1, 512)
    np.testing.assert_allclose(embedding, (pooled / pooled.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)


# with random weights a target's CAM can be all zero at a layer; each target is checked on a model
# where it is alive (the check asserts that)
@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("target,name", [(t, "smp_unet" if t == "objects" else "smp_deeplabv3plus")
                                         for t in CAM_TARGETS])
def test_every_target_and_method_equals_pytorch_grad_cam(target, name, method):
    """The PyTorch explainer export_traced traces, for each target and method (the served graph is
    held to it by the export's parity check and by the test above)."""
    model = _model(name)
    image = _frame()
    explainer = TracedExplainer(model, "encoder.layer3", make_target(target, CLASS_NAMES), MEAN, STD,
                                method=method).eval()
    cam = explainer(torch.from_numpy(image[None]))[2][0].float().numpy()
    ref = _grad_cam(model, "encoder.layer3", target, image, method=method)
    assert ref.std() > 0.05
    assert np.abs(cam - ref).max() < CAM_TOL


@pytest.mark.parametrize("target", CAM_TARGETS)
def test_each_targets_written_out_seed_is_the_gradient_of_its_definition(target):
    """The explainer feeds CamTarget.seed to the backward pass instead of differentiating the
    target: it must be dT/dlogits of the definition pytorch-grad-cam differentiates."""
    logits = torch.randn(2, NUM_CLASSES, 9, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    logits[1, :, :4] = -5.0  # a block where only the lower classes compete
    logits[1, 2, :4] = 5.0
    t = make_target(target, CLASS_NAMES)
    z = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(t(z).sum(), z)
    got = t.seed(logits, logits.argmax(1))
    assert got.shape == logits.shape
    assert float((got - expected).abs().max()) < 1e-12


@pytest.mark.parametrize("name", ["smp_deeplabv3plus", "lraspp_mobilenet_v3_large"])
def test_on_the_models_own_grid_the_cam_and_maps_come_from_the_logits_before_its_final_resize(name, tmp_path):
    """uncertainty_at="model": the target, EBU and p_max on the class scores the model computes before
    its last resize (smp's segmentation head, torchvision's F.interpolate), the labels still at the
    input's size; the CAM equals pytorch-grad-cam's with the target on those scores."""
    model = _model(name)
    image = _frame()
    layer = default_layer(model, (H, W))
    explainer = TracedExplainer(model, layer, make_target("ebu-gradient", CLASS_NAMES), MEAN, STD, "model",
                                method="gradcam").eval()
    labels, ebu, cam, pmax, _ = (t.float().numpy()[0] for t in explainer(torch.from_numpy(image[None])))
    x = _normalised(image)
    with torch.no_grad():
        native, full = ScoresOf(explainer)(x), FullResLogits(model)(x)
    assert native.shape[-2] < H and native.shape[-1] < W  # the model's own grid
    ref = _grad_cam(model, layer, "ebu-gradient", image, scores=ScoresOf(explainer))
    assert ref.std() > 0.05 and np.abs(cam - ref).max() < CAM_TOL
    _, u, p = prediction_statistics(native)
    up = [torch.nn.functional.interpolate(m[:, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
          for m in (u, p)]
    np.testing.assert_allclose(ebu, up[0].numpy(), atol=1e-3)  # float16
    np.testing.assert_allclose(pmax, up[1].numpy(), atol=1e-3)
    assert (labels == full.argmax(1)[0].numpy()).all()
    export = export_traced(model, tmp_path / "m.onnx", (H, W), uncertainty_at="model")  # parity-checked
    props = {p.key: p.value for p in onnx.load(str(export.path)).metadata_props}
    assert props[METADATA_UNCERTAINTY_AT] == "model" and export.parity["cam"] < 2e-3


# class-balanced: with these random weights both layers' CAMs are alive (ebu-gradient's die at some)
@pytest.mark.parametrize("name,layers", [("smp_deeplabv3plus", "encoder.layer4+encoder.layer2"),
                                         ("smp_unet", "encoder.layer3+encoder.layer2")])
def test_a_multi_layer_cam_equals_pytorch_grad_cam_with_those_target_layers(name, layers, tmp_path):
    """"a+b": one CAM over several layers, aggregated as pytorch-grad-cam does (each layer's map
    scaled and resized, the mean scaled again); the exported graph gives the same and records the
    spec; the embedding pools the first layer."""
    model = _model(name)
    image = _frame()
    explainer = TracedExplainer(model, layers, make_target("class-balanced", CLASS_NAMES), MEAN, STD,
                                DEFAULT_UNCERTAINTY_AT, method="gradcam").eval()
    cam = explainer(torch.from_numpy(image[None]))[2][0].float().numpy()
    scores = ScoresOf(explainer)
    ref = _grad_cam(model, layers, "class-balanced", image, scores=scores)
    single = [_grad_cam(model, n, "class-balanced", image, scores=scores) for n in split_layers(layers)]
    assert all(m.std() > 0.05 for m in single) and min(np.abs(ref - m).max() for m in single) > 0.05
    assert np.abs(cam - ref).max() < CAM_TOL
    export = export_traced(model, tmp_path / "m.onnx", (H, W), layer=layers, target="class-balanced",
                           class_names=CLASS_NAMES, method="gradcam")  # parity-checked against the explainer
    props = {p.key: p.value for p in onnx.load(str(export.path)).metadata_props}
    assert props[METADATA_CAM_LAYER] == layers and export.parity["cam"] < 2e-3
    assert export.embedding_dim == {"encoder.layer4": 512, "encoder.layer3": 256}[split_layers(layers)[0]]


def test_feature_stages_list_each_familys_stages_with_their_strides():
    unet = build_model("segmentation_models_pytorch.Unet",
                       {"encoder_name": "resnet18", "encoder_weights": None, "classes": 3})
    stages = dict(feature_stages(unet, (64, 128)))
    assert [stages[f"encoder.layer{i}"] for i in (1, 2, 3, 4)] == [4, 8, 16, 32]
    segformer = zoo.build("segformer", NUM_CLASSES)[0]
    assert [st for _, st in feature_stages(segformer, (64, 128))] == [4, 8, 16, 32]
    assert expand_layers(unet, "stride16+stride8", (64, 128)) == "encoder.layer3+encoder.layer2"
    assert expand_layers(unet, "last+encoder.layer1") == "encoder.layer4+encoder.layer1"
    deeplab = build_model("segmentation_models_pytorch.DeepLabV3Plus",
                          {"encoder_name": "resnet18", "encoder_weights": None, "classes": 3})
    assert expand_layers(deeplab, "stride16+stride8") == "encoder.layer4+encoder.layer2"  # dilated: layer4 at 1/16
    pspnet = build_model("segmentation_models_pytorch.PSPNet",
                         {"encoder_name": "resnet18", "encoder_weights": None, "classes": 3})
    assert expand_layers(pspnet, "stride16+stride8") == "encoder.layer2"  # its encoder stops at 1/8: once
    with pytest.raises(InvalidInput, match="no stage .* that fine"):
        expand_layers(segformer, "stride2")
    with pytest.raises(InvalidInput, match="each once"):
        split_layers("encoder.layer4+encoder.layer4")
    with pytest.raises(InvalidInput, match="joined by"):
        split_layers("encoder.layer4+")


def test_default_layer_is_the_last_stage_of_each_family_and_segformers_stride8_stage():
    pspnet = build_model("segmentation_models_pytorch.PSPNet",
                         {"encoder_name": "resnet18", "encoder_weights": None, "classes": 3})
    assert default_layer(pspnet) == "encoder.layer2"  # PSPNet's encoder stops at depth 3
    segformer = zoo.build("segformer", NUM_CLASSES)[0]
    assert default_layer(segformer) == "decode_head.linear_projections.1:input"  # the health table's choice
    assert expand_layers(segformer, "last") == "decode_head.linear_projections.3:input"
    with pytest.raises(InvalidInput, match="no default CAM layer.*--layer"):
        default_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)))


def test_bad_layer_or_target_is_a_clear_error(tmp_path):
    model = _model("smp_deeplabv3plus")
    with pytest.raises(InvalidInput, match="no layer 'encoder.layer9'.*top-level modules"):
        export_traced(model, tmp_path / "m.onnx", (H, W), layer="encoder.layer9")
    with pytest.raises(InvalidInput, match="unknown CAM target 'gradient'"):
        export_traced(model, tmp_path / "m.onnx", (H, W), target="gradient")
    with pytest.raises(InvalidInput, match="objects target needs one of"):
        make_target("objects", ("a", "b"))
    with pytest.raises(InvalidInput, match="model's 5 class names"):
        export_traced(model, tmp_path / "m.onnx", (H, W), target="objects")  # Cityscapes' 19 by default
    assert not (tmp_path / "m.onnx").exists()


def test_models_add_eem_exports_a_torch_model_by_import_path_and_publishes_it(tmp_path, capsys):
    from app.cli import main
    torch.manual_seed(3)
    model = build_model("segmentation_models_pytorch.FPN",
                        {"encoder_name": "resnet18", "encoder_weights": None, "classes": NUM_CLASSES})
    torch.save(model.state_dict(), tmp_path / "fpn.pt")
    (tmp_path / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    out = tmp_path / "fpn_eem.onnx"
    rc = main(["models", "add-eem", str(out), "--model-import", "segmentation_models_pytorch:FPN",
               "--model-kwargs", '{"encoder_name": "resnet18", "encoder_weights": null, "classes": 5}',
               "--checkpoint", str(tmp_path / "fpn.pt"), "--layer", "encoder.layer3", "--cam-target", "ebu-gradient",
               "--cam-method", "hirescam",
               "--input-size", f"{H},{W}", "--labels", str(tmp_path / "classes.txt"),
               "--repo", str(tmp_path / "repo"), "--name", "seg"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cam_layer"] == "encoder.layer3 (ebu-gradient, hirescam)" and summary["version"] == 1
    assert summary["cam_method"] == "hirescam"
    assert summary["uncertainty_at"] == DEFAULT_UNCERTAINTY_AT == "model"
    assert summary["outputs"] == ["labels", "ebu", "cam", "pmax", "embedding"] and summary["embedding_dim"] == 256
    spec = spec_from_config(ModelRepository(tmp_path / "repo").read_config("seg"))
    assert spec.cam_layer == summary["cam_layer"] and spec.class_names == CLASS_NAMES and spec.fixed_batch == 1
    image = _frame()
    served = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["cam"], {"image": image[None]})[0]
    model.load_state_dict(torch.load(tmp_path / "fpn.pt"))  # the checkpoint's weights, as served
    ref = _grad_cam(model.eval(), "encoder.layer3", "ebu-gradient", image,
                    scores=_default_scores(model, "encoder.layer3"), method="hirescam")
    assert ref.std() > 0.05 and np.abs(served[0].astype(np.float32) - ref).max() < CAM_TOL


@pytest.mark.parametrize("argv,message", [
    (["o.onnx", "--model-import", "segmentation_models_pytorch.FPN", "--model-kwargs", "{bad",
      "--input-size", "64,128"],
     "--model-kwargs is not JSON"),
    (["o.onnx", "--model-import", "segmentation_models_pytorch.FPN"], "--input-size H,W is needed"),
    (["o.onnx", "--model-import", "no_such_package.Model", "--input-size", "64,128"], "cannot import"),
    (["in.onnx", "out.onnx", "--layer", "encoder.layer4"], "--layer, --cam-target and --cam-method need a torch model"),
])
def test_models_add_eem_bad_torch_arguments_are_one_clear_line(argv, message, tmp_path, capsys, monkeypatch):
    from app.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["models", "add-eem", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def _served_health(path, images: np.ndarray) -> dict:
    """dead share and the CAM's correlations over the frames, from the exported graph (one frame a call)."""
    from segxal.eem.health import cam_degenerate
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps = [session.run(["ebu", "cam", "pmax"], {"image": im[None]}) for im in images]
    ebu, cam, pmax = (np.concatenate(m).astype(np.float32) for m in zip(*maps))  # [N, H, W] each
    return {"dead": float(np.mean(cam_degenerate(cam))),
            "corr_ebu": float(np.corrcoef(cam.ravel(), ebu.ravel())[0, 1]),
            "corr_pmax": float(np.corrcoef(cam.ravel(), pmax.ravel())[0, 1])}


def test_briefly_trained_foreign_model_cam_is_neither_dead_nor_its_confidence(tiny_dataset, tmp_path):
    """smp PSPNet trained for 3 epochs on the synthetic frames: the served CAM of the default target
    is alive on every validation frame and does not follow the model's confidence (|corr| with EBU
    and p_max <= 0.3); the class-agnostic target at the same layer of the same checkpoint does
    (the check tells a confidence map apart)."""
    from segxal.data.cityscapes import SegDataset, list_frames
    from segxal.graph.traced_cam import DEFAULT_CAM_TARGET
    from segxal.models.external import ExternalModel, ExternalModelConfig
    from segxal.train import TrainConfig, train_segmentation
    torch.manual_seed(0)
    model = ExternalModel(ExternalModelConfig("segmentation_models_pytorch.PSPNet",
                                              {"encoder_name": "resnet18", "encoder_weights": None, "classes": 19}))
    train_segmentation(model, SegDataset(list_frames(tiny_dataset, "train", True)),
                       TrainConfig(epochs=3, batch_size=8, progress=False, device="cpu"))
    val = SegDataset(list_frames(tiny_dataset, "val", True))
    images = np.stack([val.raw(i)[0] for i in range(len(val))])  # uint8 [8, 64, 128, 3]
    shipped = _served_health(export_traced(model.inner, tmp_path / "shipped.onnx", images.shape[1:3]).path, images)
    assert shipped["dead"] == 0.0
    assert abs(shipped["corr_ebu"]) <= 0.3 and abs(shipped["corr_pmax"]) <= 0.3, (DEFAULT_CAM_TARGET, shipped)
    agnostic = _served_health(export_traced(model.inner, tmp_path / "agnostic.onnx", images.shape[1:3],
                                            target="class-agnostic").path, images)
    assert agnostic["corr_ebu"] < -0.3 and agnostic["corr_pmax"] > 0.3, agnostic


def test_cam_health_reads_a_repository_of_another_architecture(served, tiny_dataset, capsys):
    """bench/cam_health.py on a repository holding smp Unet's traced graph (fixed batch, five
    classes): every version measured through ONNX Runtime, input prepared as its config says."""
    from bench.cam_health import main as cam_health
    rows = cam_health(["--repo", str(served["repo"].root), "--model", "smp_unet", "--data", str(tiny_dataset),
                       "--frames", "4"])["rows"]
    assert [r["version"] for r in rows] == [1] and rows[0]["frames"] == 4
    assert 0.0 <= rows[0]["dead_share"] <= 1.0 and 0.0 <= rows[0]["pixel_accuracy"] <= 1.0
    assert "smp_unet: cam_layer encoder.layer4 (objects, hirescam)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The backward pass's cost passes (docs/cam.md, Cost): each is exact, so each is held to the
# computation it replaces and to pytorch-grad-cam, and each is checked to fire where it should.


def _traced(fn, *examples):
    from torch.fx.experimental.proxy_tensor import make_fx

    from segxal.graph.traced_cam import _decompositions, _ResampleAsMatMul
    with _ResampleAsMatMul():
        return make_fx(fn, decomposition_table=_decompositions())(*examples)


def _sum_pools(gm) -> int:
    from segxal.graph.traced_cam import _is_sum_pool
    return sum(_is_sum_pool(n, gm) for n in gm.graph.nodes)


def test_a_convolution_then_a_sum_pooling_becomes_one_strided_convolution_with_the_same_result():
    """The backward of a decoder convolution followed by that of a nearest upsampling (a 2x2 sum
    pooling), alone and as one term of an Add (FPN's top-down path): one convolution on the pooled
    grid, equal to the two it replaces."""
    from segxal.graph.traced_cam import _fuse_pooled_convolutions
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(6, 4, 3, 3, generator=gen), torch.randn(6, 5, 3, 3, generator=gen)
    ones = torch.ones(6, 1, 2, 2)

    def alone(x):
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w1, padding=1), ones, stride=2, groups=6)

    def in_a_sum(x, y):
        s = torch.nn.functional.conv2d(x, w1, padding=1) + torch.nn.functional.conv2d(y, w2, padding=1)
        return torch.nn.functional.conv2d(s, ones, stride=2, groups=6)

    x, y = torch.randn(2, 4, 12, 16, generator=gen), torch.randn(2, 5, 12, 16, generator=gen)
    for fn, args in ((alone, (x,)), (in_a_sum, (x, y))):
        gm = _traced(fn, *args)
        assert _sum_pools(gm) == 1
        expected = fn(*args)
        fused = _fuse_pooled_convolutions(gm)
        assert _sum_pools(fused) == 0
        convs = [n for n in fused.graph.nodes if n.target is torch.ops.aten.convolution.default and not n.args[6]]
        assert all(list(n.args[3]) == [2, 2] for n in convs)  # every convolution now runs on the pooled grid
        assert float((fused(*args) - expected).abs().max()) < 1e-4


def test_a_sum_pooling_that_reads_padding_is_left_alone():
    """Sizes that are not multiples of the pooling's stride: the pooling would read past the
    convolution's grid, where the fused kernel would not see zeros; the pass keeps both."""
    from segxal.graph.traced_cam import _fuse_pooled_convolutions
    w1, ones = torch.randn(3, 2, 3, 3), torch.ones(3, 1, 2, 2)

    def fn(x):
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w1, padding=1), ones, stride=2, groups=3,
                                          padding=1)

    x = torch.randn(1, 2, 7, 9)
    fused = _fuse_pooled_convolutions(_traced(fn, x))
    assert sum(n.target is torch.ops.aten.convolution.default for n in fused.graph.nodes) == 2
    assert float((fused(x) - fn(x)).abs().max()) < 1e-5


def test_smp_unets_decoder_backward_runs_each_upsampling_adjoint_fused():
    """smp Unet (nearest upsampling before each decoder block): after tracing no sum pooling is left
    behind a convolution; the served CAM of the test above holds the result to pytorch-grad-cam."""
    from segxal.graph.traced_cam import _prune_channel_slices, trace_explainer
    model = _model("smp_unet")
    explainer = TracedExplainer(model, "encoder.layer4", make_target("class-balanced", CLASS_NAMES), MEAN, STD,
                                "model").eval()
    example = torch.zeros(1, H, W, 3, dtype=torch.uint8)
    from torch.fx.experimental.proxy_tensor import make_fx

    from segxal.graph.traced_cam import _decompositions, _ResampleAsMatMul
    with _ResampleAsMatMul():
        before = _prune_channel_slices(make_fx(explainer, decomposition_table=_decompositions())(example))
    assert _sum_pools(before) == 5  # one a decoder block
    after = trace_explainer(explainer, example)
    assert _sum_pools(after) == 0
    with torch.no_grad():
        diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(after(example), before(example))]
    assert max(diffs) < 2e-3


@pytest.mark.parametrize("align_corners", [False, True])
def test_resizes_run_as_the_op_itself_forward_and_their_exact_adjoint_backward(align_corners, tmp_path):
    """A model that resizes bilinearly (align-corners or half-pixel, an integer and a fractional
    factor) and upsamples by nearest: its export holds one ONNX Resize per resize (not the MatMuls
    or transposed convolutions the backward uses), and its CAM equals pytorch-grad-cam's."""
    import torch.nn.functional as F

    class Resizer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU(),
                                               torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU())
            self.mix = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.head = torch.nn.Conv2d(8, NUM_CLASSES, 1)
            torch.nn.init.normal_(self.head.weight, std=2.0)

        def forward(self, x):
            a = self.encoder(x)  # 1/8
            b = F.interpolate(a, scale_factor=2, mode="nearest")  # 1/4
            c = F.interpolate(torch.relu(self.mix(b)), size=(H // 3, W // 3), mode="bilinear",
                              align_corners=align_corners)  # a fractional factor
            z = self.head(c)
            return F.interpolate(z, size=(H, W), mode="bilinear", align_corners=align_corners)

    model = Resizer().eval()
    export = export_traced(model, tmp_path / "m.onnx", (H, W), layer="encoder", target="class-balanced",
                           uncertainty_at="input", method="gradcam")  # parity-checked against eager
    ops = [n.op_type for n in onnx.load(str(export.path)).graph.node]
    assert ops.count("Resize") >= 4  # the model's three, the CAM's to the input's size
    image = _frame()
    session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    cam = session.run(["cam"], {"image": image[None]})[0][0].astype(np.float32)
    ref = _grad_cam(model, "encoder", "class-balanced", image)
    assert ref.std() > 0.05 and np.abs(cam - ref).max() < CAM_TOL


def test_a_cam_layer_before_attention_exports_and_serves_what_pytorch_computes(tmp_path):
    """SegFormer's stride-8 stage feeds the two later transformer stages: the CAM's backward crosses
    their attention, which is traced as its math (the fused kernel's backward has no ONNX form);
    ONNX Runtime gives what eager autograd gives (the export's parity check) on a live map."""
    segformer = zoo.build("segformer", NUM_CLASSES)[0].eval()
    export = export_traced(segformer, tmp_path / "m.onnx", (H, W), layer="stride8")
    assert export.layer == "decode_head.linear_projections.1:input"
    assert export.parity["cam"] < 2e-3 and export.parity["labels"] == 0.0
    session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    cam = session.run(["cam"], {"image": _frame()[None]})[0][0].astype(np.float32)
    assert cam.std() > 0.05
