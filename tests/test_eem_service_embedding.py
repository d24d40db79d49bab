"""What a scored frame carries for selection, and what the EEM service's stats say about each served
model's CAM, end to end: real inference server and EEM service (tests/eem_stack_support.py) over a
model repository of real exports (the U-Net's, an add-eem model's, one without an embedding,
models built to have a dead CAM and a confidence-map CAM)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from app.report import table_row, version_cam_health
from segxal import imageio
from segxal.data.cityscapes import normalize_image
from segxal.export import ExportConfig, export_any_segmentation, export_depth, export_segmentation
from segxal.models import zoo
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from services.common.model_repository import ModelRepository, build_config
from services.eem.api import ScoreOptions
from tests.eem_stack_support import eem_stack
from tests.triton_support import triton_install  # noqa: F401 (session fixture)

H, W = 64, 128
FRAMES = 20  # the CAM health flags need at least this many frames (segxal.eem.health.MIN_FRAMES)


def _frames(root: Path, n: int, seed: int = 7) -> list[Path]:
    """Frames with structure (blocks of colour), so predictions and CAMs vary across the frame."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
        paths.append(root / f"city_000000_{i:06d}_leftImg8bit.png")
        imageio.write_png(paths[-1], np.kron(small, np.ones((8, 8, 1), dtype=np.uint8)))
    return paths


def _repository(root: Path, seg_export) -> Path:
    """A repository with `seg_export` as "segmentation" and a tiny depth net as "depth"."""
    torch.manual_seed(1)
    depth = export_depth(DepthNet(DepthConfig(width=4, depth=2)).eval(), root / "export" / "depth" / "model.onnx",
                         ExportConfig(trace_hw=(H, W)))
    repo = ModelRepository(root / "repo")
    repo.publish("segmentation", seg_export.path, build_config("segmentation", seg_export.spec))
    repo.publish("depth", depth.path, build_config("depth", depth.spec))
    return root / "repo"


def _unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(width=4, depth=2)).eval()


def test_unet_frames_carry_its_embedding_and_their_class_histogram(tmp_path):
    model = _unet()
    seg = export_segmentation(model, tmp_path / "export" / "seg" / "model.onnx", ExportConfig(trace_hw=(H, W)))
    paths = _frames(tmp_path / "frames", 3)
    with eem_stack(_repository(tmp_path, seg), tmp_path / "frames") as eem:
        results = [eem.score(str(p), ScoreOptions(labels=True)).raise_for_error() for p in paths]
    images = np.stack([imageio.read_rgb(p) for p in paths])
    with torch.inference_mode():
        ref = model.embed(torch.from_numpy(np.stack([normalize_image(im) for im in images]))).numpy()
    for r, want in zip(results, ref):
        assert r.embedding.dtype == np.float32 and r.embedding.shape == (seg.spec.embedding_dim,)
        np.testing.assert_allclose(np.linalg.norm(r.embedding), 1.0, atol=1e-5)
        np.testing.assert_allclose(r.embedding, want, atol=1e-5)  # UNet.embed of the same frame
        labels = r.labels()
        assert r.class_histogram.dtype == np.float32 and r.class_histogram.shape == (19,)
        np.testing.assert_allclose(r.class_histogram.sum(), 1.0, atol=1e-5)
        np.testing.assert_allclose(r.class_histogram, np.bincount(labels.ravel(), minlength=19) / labels.size,
                                   atol=1e-6)
        assert (r.class_histogram > 0).sum() > 1  # a non-trivial prediction, else the check is weak
    # two frames, two embeddings (a random tiny U-Net's pooled features differ little; 10x the tolerance)
    assert np.abs(results[0].embedding - results[1].embedding).max() > 1e-4


def test_add_eem_model_frames_carry_the_head_input_embedding(tmp_path):
    model, _ = zoo.build("lraspp_mobilenet_v3_large", 5)
    names = ("road", "car", "person", "tree", "sky")
    seg = export_any_segmentation(model, tmp_path / "export" / "seg" / "model.onnx", ExportConfig(trace_hw=(H, W)),
                                  class_names=names)
    assert seg.spec.embedding_dim == 40 + 128  # LR-ASPP: both classifier inputs' channels
    paths = _frames(tmp_path / "frames", 2)
    with eem_stack(_repository(tmp_path, seg), tmp_path / "frames") as eem:
        results = [eem.score(str(p), ScoreOptions(labels=True)).raise_for_error() for p in paths]
    for r in results:
        assert r.embedding.shape == (seg.spec.embedding_dim,)
        np.testing.assert_allclose(np.linalg.norm(r.embedding), 1.0, atol=1e-5)
        labels = r.labels()
        assert r.class_names == names and r.class_histogram.shape == (5,)
        np.testing.assert_allclose(r.class_histogram, np.bincount(labels.ravel(), minlength=5) / labels.size,
                                   atol=1e-6)
    assert np.abs(results[0].embedding - results[1].embedding).max() > 1e-4


def test_model_without_an_embedding_still_scores(tmp_path):
    seg = export_segmentation(_unet(), tmp_path / "export" / "seg" / "model.onnx",
                              ExportConfig(trace_hw=(H, W), with_embedding=False))
    paths = _frames(tmp_path / "frames", 1)
    with eem_stack(_repository(tmp_path, seg), tmp_path / "frames") as eem:
        r = eem.score(str(paths[0])).raise_for_error()
    assert r.embedding.shape == (0,) and r.score > 0
    np.testing.assert_allclose(r.class_histogram.sum(), 1.0, atol=1e-5)


def _score_and_watch(tmp_path, seg_export, caplog):
    """Score FRAMES - 1 frames, read the stats, score one more, read them again."""
    paths = _frames(tmp_path / "frames", FRAMES)
    with caplog.at_level(logging.WARNING, logger="services.eem.pipeline"), \
            eem_stack(_repository(tmp_path, seg_export), tmp_path / "frames") as eem:
        for p in paths[:-1]:
            eem.score(str(p)).raise_for_error()
        before = eem.stats().cam_health
        warned_before = [r.getMessage() for r in caplog.records]
        eem.score(str(paths[-1])).raise_for_error()
        stats = eem.stats()
    return before, stats.cam_health, warned_before, [r.getMessage() for r in caplog.records], stats


def test_stats_flag_a_model_version_whose_cam_died(tmp_path, caplog):
    """A U-Net whose classifier weights are zero: one class everywhere, a CAM that is all zero."""
    model = _unet()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    seg = export_segmentation(model, tmp_path / "export" / "seg" / "model.onnx", ExportConfig(trace_hw=(H, W)))
    before, after, warned_before, warned, stats = _score_and_watch(tmp_path, seg, caplog)
    [b], [a] = before, after
    assert b.model_version == a.model_version == "segmentation:1" and a.cam_layer == "bottleneck (class-balanced)"
    assert (b.frames, b.frames_dead, b.cam_dead) == (FRAMES - 1, FRAMES - 1, False)  # too few frames yet
    assert (a.frames, a.frames_dead, a.dead_share, a.cam_dead) == (FRAMES, FRAMES, 1.0, True)
    assert not a.cam_confidence_map
    assert not warned_before and len(warned) == 1
    assert "segmentation:1" in warned[0] and "CAM dead on 20 of 20 frames" in warned[0]
    # the loop's cycle record and table row read the same stats
    health = version_cam_health(stats, "segmentation:1")
    assert health["dead_share"] == 1.0 and health["cam_dead"] and health["cam_ebu_correlation"] is None
    assert version_cam_health(stats, "segmentation:2") is None
    row = table_row({"cycle": 1, "miou": 0.5, "model_version": 1, "mean_dice": None, "seconds": 1.0,
                     "publish_refused": "", "labeled": {"frames": 1, "regions": 1, "pixels": 1},
                     "cam_health": health})
    assert "v1 dead 100.0 % corr(CAM,EBU) -!" in row


class _ConfidenceCam(nn.Module):
    """Two classes, logits (+a, -a) of one non-negative feature a = ReLU(mean RGB + 3): class 0
    everywhere, the class-agnostic CAM is a itself, and EBU falls as a (the margin) grows: the CAM
    is the model's confidence, anti-correlated with EBU."""

    def __init__(self):
        super().__init__()
        self.feature = nn.Conv2d(3, 1, 1)
        self.classifier = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.feature.weight.fill_(1.0 / 3.0)
            self.feature.bias.fill_(3.0)
            self.classifier.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return self.classifier(torch.relu(self.feature(x)))


def test_stats_flag_a_model_version_whose_cam_is_a_confidence_map(tmp_path, caplog):
    seg = export_any_segmentation(_ConfidenceCam().eval(), tmp_path / "export" / "seg" / "model.onnx",
                                  ExportConfig(trace_hw=(H, W)), class_names=("near", "far"))
    before, after, warned_before, warned, stats = _score_and_watch(tmp_path, seg, caplog)
    [b], [a] = before, after
    assert b.cam_ebu_correlation < -0.3 and not b.cam_confidence_map  # too few frames yet
    assert a.frames == FRAMES and a.frames_dead == 0 and not a.cam_dead
    assert a.cam_ebu_correlation < -0.3 and a.cam_confidence_map
    assert not warned_before and len(warned) == 1 and "a confidence map" in warned[0]
    health = version_cam_health(stats, "segmentation:1")
    assert health["cam_confidence_map"] and health["cam_ebu_correlation"] == pytest.approx(a.cam_ebu_correlation)


def test_triton_passes_the_embedding_through_as_the_projects_server(tmp_path, triton_install):  # noqa: F811
    """The same repository (Python-backend flavour) served by a real Triton Inference Server: the
    EEM service's frames carry the same embedding and class histogram as with the project's server."""
    from services.eem.client import EemClient
    from services.eem.pipeline import PipelineConfig
    from services.eem.server import EemServer, EemServiceConfig
    from services.common.server import ServerConfig
    from tests.triton_support import python_flavour, running_triton
    model = _unet()
    seg = export_segmentation(model, tmp_path / "export" / "seg" / "model.onnx", ExportConfig(trace_hw=(H, W)))
    repo_root = _repository(tmp_path, seg)
    paths = _frames(tmp_path / "frames", 2)
    with eem_stack(repo_root, tmp_path / "frames") as eem:
        ours = [eem.score(str(p)).raise_for_error() for p in paths]
    python_flavour(ModelRepository(repo_root))
    with running_triton(triton_install, ModelRepository(repo_root), tmp_path / "triton", control_mode="none") as triton:
        server = EemServer(EemServiceConfig(seg_target=triton.target, depth_target=triton.target,
                                            storage_roots=[str(tmp_path / "frames")], health_poll_s=0.1,
                                            server=ServerConfig(address="127.0.0.1:0", grace_s=1.0),
                                            pipeline=PipelineConfig(max_concurrency=1)))
        server.start()
        try:
            with EemClient(server.target, timeout_s=60) as client:
                client.wait_until_serving(60)
                theirs = [client.score(str(p)).raise_for_error() for p in paths]
        finally:
            server.stop(1.0)
    for a, b in zip(ours, theirs):
        assert b.embedding.shape == (seg.spec.embedding_dim,)
        np.testing.assert_array_equal(a.embedding, b.embedding)
        np.testing.assert_array_equal(a.class_histogram, b.class_histogram)
