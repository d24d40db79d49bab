"""`segxal models add-eem` (app.models) as a user runs it: a torchvision LR-ASPP exported with a
fixed batch, given the EEM outputs and published with a label file; the repository's config is
what the inference client reads (classes, CAM layer, fixed batch). Bad inputs get one clear line."""
from __future__ import annotations

import json

import pytest

from app.cli import main
from segxal.models import zoo
from segxal.models.external import export_logits_onnx
from services.common.model_repository import ModelRepository, spec_from_config
from tests.zoo_support import H, NUM_CLASSES, W


@pytest.fixture(scope="module")
def lraspp_onnx(tmp_path_factory):
    model, _ = zoo.build("lraspp_mobilenet_v3_large", NUM_CLASSES)
    return export_logits_onnx(model, tmp_path_factory.mktemp("cli") / "lraspp.onnx", (H, W), dynamic_batch=False)


def test_add_eem_and_publish(lraspp_onnx, tmp_path, capsys):
    labels = tmp_path / "classes.txt"
    labels.write_text("road\ncar\nperson\ntree\nsky\n")
    out = tmp_path / "lraspp_eem.onnx"
    rc = main(["models", "add-eem", str(lraspp_onnx), str(out), "--repo", str(tmp_path / "repo"),
               "--name", "seg", "--labels", str(labels)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cam_layer"].count("Conv 1x1") == 2 and summary["cam_exact"] and not summary["ebu_only"]
    assert summary["outputs"] == ["labels", "ebu", "cam", "pmax", "embedding"] and summary["version"] == 1
    config = ModelRepository(tmp_path / "repo").read_config("seg")
    spec = spec_from_config(config)
    assert config.max_batch_size == 0 and spec.fixed_batch == 1 and spec.image_input.dims == (3, H, W)
    assert spec.class_names == ("road", "car", "person", "tree", "sky")
    assert spec.cam_layer == summary["cam_layer"] and spec.has_cam
    assert spec.embedding_dim == summary["embedding_dim"] > 0  # both LR-ASPP branches' channels


def test_label_file_with_the_wrong_class_count_is_one_clear_line(lraspp_onnx, tmp_path, capsys):
    labels = tmp_path / "classes.txt"
    labels.write_text("road\ncar\n")
    rc = main(["models", "add-eem", str(lraspp_onnx), str(tmp_path / "o.onnx"), "--repo", str(tmp_path / "r"),
               "--name", "seg", "--labels", str(labels)])
    err = capsys.readouterr().err
    assert rc == 2 and "the label file lists 2 classes but the model has 5" in err


def test_not_an_onnx_file_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["models", "add-eem", str(bad), str(tmp_path / "o.onnx")]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
