"""One scale and label maps for models from elsewhere: plan_resize (declared size, letterbox), the region floor
that grows with resolution and the cap on regions per frame, LabelMap (a dataset's own taxonomy),
and ModelSpec's checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from segxal.data.cityscapes import list_frames, load_train_ids
from segxal.eem.regions import extract_regions, scaled_min_area
from segxal.errors import InvalidInput
from segxal.labels import IGNORE, LABEL_MAP_FILE, NAME_TO_TRAIN_ID, LabelMap
from segxal.modelspec import SEGMENTATION, ModelSpec, Preprocessing, TensorSpec, plan_resize


def _spec(dims, **kw) -> ModelSpec:
    return ModelSpec(kind=SEGMENTATION, inputs=(TensorSpec("image", "UINT8", dims),),
                     outputs=(TensorSpec("labels", "UINT8", (-1, -1)),), preprocessing=Preprocessing(), **kw)


def test_declared_input_size_is_what_frames_are_resized_to():
    plan = plan_resize(_spec((-1, -1, 3), input_size=(256, 512), spatial_multiple=32), (1024, 2048))
    assert plan.content_hw == plan.input_hw == (256, 512) and plan.frame_hw == (1024, 2048)
    plan = plan_resize(_spec((128, 256, 3)), (1024, 2048))  # static dims declare it too
    assert plan.input_hw == (128, 256)


def test_letterbox_keeps_the_aspect_and_pads_to_the_multiple():
    # dynamic input, ViT patches of 14: 1024 x 2048 fits 259 x 518, padded to 266 x 518
    plan = plan_resize(_spec((-1, -1, 3), input_size=(266, 518), resize_mode="letterbox", spatial_multiple=14),
                       (1024, 2048))
    assert plan.content_hw == (259, 518) and plan.input_hw == (266, 518)
    maps = np.arange(2 * 266 * 518, dtype=np.float32).reshape(2, 266, 518)
    assert plan.crop(maps).shape == (2, 259, 518)  # padding rows dropped before resizing back
    assert plan.crop(maps[:, ::2, ::2]).shape == (2, 130, 259)  # outputs at half resolution too


def test_frame_not_a_multiple_without_a_declared_size_is_a_clear_error():
    with pytest.raises(InvalidInput, match="multiples of 32"):
        plan_resize(_spec((-1, -1, 3), spatial_multiple=32), (100, 200))


def test_region_floor_scales_with_resolution():
    assert scaled_min_area(16, 256, 512) == 16
    assert scaled_min_area(16, 1024, 2048) == 256  # same share of the scene
    assert scaled_min_area(16, 128, 256) == 4  # same share at a smaller model size
    assert scaled_min_area(16, 16, 32) == 1 and scaled_min_area(0, 1024, 2048) == 0  # at least 1 when set


def test_regions_are_capped_by_eem_mass():
    eem = np.zeros((64, 64), np.float32)
    masses = {}
    for k in range(12):  # 12 separated squares of growing size and value
        y, x, s = (k // 4) * 20, (k % 4) * 16, 3 + k % 5
        eem[y:y + s, x:x + s] = 0.5 + 0.04 * k
        masses[k] = s * s * (0.5 + 0.04 * k)
    labels = np.zeros((64, 64), np.uint8)
    every = extract_regions(eem, labels, threshold=0.1, min_area=1)
    capped = extract_regions(eem, labels, threshold=0.1, min_area=1, max_regions=5)
    assert len(every) == 12 and len(capped) == 5
    top5 = sorted(masses.values(), reverse=True)[:5]
    assert sorted((r.area * r.mean_eem for r in capped), reverse=True) == pytest.approx(top5, rel=1e-5)


def test_regions_name_the_models_own_classes():
    eem = np.zeros((16, 16), np.float32)
    eem[2:8, 2:8] = 0.9
    labels = np.full((16, 16), 2, np.uint8)
    (r,) = extract_regions(eem, labels, threshold=0.5, min_area=1, class_names=("road", "car", "person"))
    assert (r.class_id, r.class_name) == (2, "person")
    with pytest.raises(InvalidInput, match="class indices 0..1"):
        extract_regions(eem, labels, threshold=0.5, class_names=("road", "car"))


def test_label_map_groups_cityscapes_classes():
    lm = LabelMap({"flat": ["road", "sidewalk"], "human": ["person", "rider"]})
    train_ids = np.array([[NAME_TO_TRAIN_ID["road"], NAME_TO_TRAIN_ID["rider"]],
                          [NAME_TO_TRAIN_ID["sky"], IGNORE]], np.uint8)
    np.testing.assert_array_equal(lm.apply(train_ids), [[0, 1], [IGNORE, IGNORE]])
    with pytest.raises(InvalidInput, match="'roads' .* is not a Cityscapes class"):
        LabelMap({"flat": ["roads"], "x": ["car"]})
    with pytest.raises(InvalidInput, match="'car' is in both"):
        LabelMap({"a": ["car"], "b": ["car"]})


def test_dataset_with_a_label_map_yields_its_own_classes(tiny_dataset, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / LABEL_MAP_FILE).write_text(json.dumps({"flat": ["road", "sidewalk"], "sky": ["sky"]}))
    frame = list_frames(data, "val", require_labels=True)[0]
    original = load_train_ids(list_frames(tiny_dataset, "val", require_labels=True)[0])
    mapped = load_train_ids(frame)
    assert set(np.unique(mapped)) <= {0, 1, IGNORE}
    np.testing.assert_array_equal(mapped == 1, original == NAME_TO_TRAIN_ID["sky"])


def test_class_names_must_match_the_class_count():
    with pytest.raises(InvalidInput, match="lists 2 classes but the model has 3"):
        _spec((-1, -1, 3), num_classes=3, class_names=("a", "b"))


def test_large_frame_is_scored_at_the_models_scale_with_bounded_regions(tmp_path):
    """A U-Net exported as the trainer exports it (input size declared) scores a 512 x 1024 frame:
    the client resizes it to the declared 64 x 128, maps and regions come back at 512 x 1024, the
    region floor is scaled (16 px at 256 x 512 -> 64 px here) and the regions are capped."""
    import torch

    from segxal import imageio
    from segxal.eem.regions import DEFAULT_MAX_REGIONS
    from segxal.export import ExportConfig, export_depth, export_segmentation
    from segxal.models.depth import DepthConfig, DepthNet
    from segxal.models.unet import UNet, UNetConfig
    from services.common.model_repository import ModelRepository, build_config
    from services.eem.api import ScoreOptions
    from tests.eem_stack_support import eem_stack

    cfg = ExportConfig(trace_hw=(64, 128), declare_input_size=True)
    torch.manual_seed(0)
    seg = export_segmentation(UNet(UNetConfig(width=4, depth=2)), tmp_path / "seg" / "model.onnx", cfg)
    depth = export_depth(DepthNet(DepthConfig(width=4, depth=2)), tmp_path / "depth" / "model.onnx", cfg)
    assert seg.spec.input_size == (64, 128)
    repo = ModelRepository(tmp_path / "repo")
    repo.publish("segmentation", seg.path, build_config("segmentation", seg.spec))
    repo.publish("depth", depth.path, build_config("depth", depth.spec))
    rng = np.random.default_rng(0)
    imageio.write_png(tmp_path / "frames" / "big.png", rng.integers(0, 256, (512, 1024, 3), dtype=np.uint8))
    with eem_stack(repo.root, tmp_path / "frames") as client:
        r = client.score(str(tmp_path / "frames" / "big.png"),
                         ScoreOptions(regions=True, maps=("eem",))).raise_for_error()
    assert (r.height, r.width) == (512, 1024) and r.map("eem").shape == (512, 1024)
    assert 0 < len(r.regions) <= DEFAULT_MAX_REGIONS
    assert min(reg.area for reg in r.regions) >= scaled_min_area(16, 512, 1024) == 64
