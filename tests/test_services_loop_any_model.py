"""`segxal loop` end to end through the real services with a model no one here wrote
(torchvision deeplabv3_mobilenet_v3_large, random weights) in place of the U-Net, on data whose
ground truth uses its own five-class label map (<data>/label_map.json) instead of Cityscapes'."""
import json
import shutil

import pytest

from app.loop import ServicesLoopConfig
from app.loop import run as run_services
from segxal.al.loop import ALConfig
from segxal.graph.traced_cam import DEFAULT_CAM_METHOD, DEFAULT_CAM_TARGET, describe_cam
from segxal.labels import LABEL_MAP_FILE
from services.common.model_repository import ModelRepository, spec_from_config

LABEL_MAP = {"flat": ["road", "sidewalk"], "construction": ["building", "wall", "fence"],
             "vehicle": ["car", "truck", "bus", "train", "motorcycle", "bicycle"], "human": ["person", "rider"],
             "sky": ["sky"]}  # vegetation, terrain, poles and signs: ignore
DEEPLAB = "torchvision.models.segmentation.deeplabv3_mobilenet_v3_large"


@pytest.fixture(scope="module")
def loop_report(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop_any")
    data = root / "data"
    shutil.copytree(tiny_dataset, data)  # the session's dataset stays Cityscapes
    (data / LABEL_MAP_FILE).write_text(json.dumps(LABEL_MAP))
    cfg = ALConfig(data=str(data), out=str(root / "out"), size=(64, 128), seed_frames=6, cycles=2, budget=4,
                   init_epochs=2, finetune_epochs=1, depth_epochs=1, batch_size=4, progress=False,
                   cache_dir=str(root / "cache"))
    kwargs = {"num_classes": len(LABEL_MAP), "weights": None, "weights_backbone": None, "aux_loss": False}
    report = run_services(ServicesLoopConfig(al=cfg, drive_log_frames=4, overlays=1, miou_tolerance=1.0,
                                             model_import=DEEPLAB, model_kwargs=json.dumps(kwargs)))
    return root, report


def test_loop_runs_with_deeplab_and_its_own_label_map(loop_report):
    root, report = loop_report
    recs = report["cycles"]
    assert [r["model_version"] for r in recs] == list(range(1, len(recs) + 1)) and len(recs) >= 2
    assert set(recs[0]["per_class"]) == set(LABEL_MAP)  # mIoU over the model's classes
    assert all(r["mean_dice"] is not None for r in recs[1:])
    config = ModelRepository(root / "out" / "services" / "repo" / "segmentation").read_config("segmentation")
    spec = spec_from_config(config)
    assert spec.class_names == tuple(LABEL_MAP) and spec.num_classes == len(LABEL_MAP)
    # the trainer exports a model built by import path with the traced GradCAM (segxal.graph.traced_cam)
    assert spec.cam_layer == describe_cam("backbone.16", DEFAULT_CAM_TARGET, DEFAULT_CAM_METHOD) and spec.input_size == (64, 128)
    assert spec.fixed_batch == 1 and spec.embedding_dim == 960


def test_the_loops_pool_is_labelled_in_the_label_maps_classes(loop_report):
    """The pool the loop made takes the label map's classes (the model's), and so did every
    annotation the simulated human sent: read back through a coordinator on the run's database."""
    from segxal import imageio
    from segxal.labels import IGNORE
    from tests.coordinator_support import coordinator_config, running_coordinator
    root, _ = loop_report
    work = root / "out" / "services"
    with running_coordinator(coordinator_config(f"sqlite:///{work / 'coordinator.db'}", work / "verify")) as (_, c):
        pool = c.get_pool(name="train-pool")
        assert tuple(pool.class_names) == tuple(LABEL_MAP)
        masks = [imageio.read_label(a.mask_uri) for a in c.annotations(pool.pool_id)]
    assert masks and all(((m < len(LABEL_MAP)) | (m == IGNORE)).all() for m in masks)
