"""The EEM service at camera resolution: the EEM maths runs at the model's declared input
size and only what leaves the service is brought to the frame. Real inference server and EEM
server on ephemeral ports serving tiny U-Net / depth exports that declare a 64 x 128 input; the
reference is the same maths in process (ONNX Runtime on the same files, the frame resized with the
project's one resize function, segxal.eem.frame.score_frame at 64 x 128), and the regions at the
model's size upsampled nearest-neighbour (segxal.resize.resize_nearest)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.eem.frame import score_frame
from segxal.eem.regions import extract_regions, rle_to_mask
from segxal.export import ExportConfig, export_depth, export_segmentation
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from segxal.resize import resize_image, resize_map, resize_nearest
from services.common.model_repository import ModelRepository, build_config
from services.eem.api import ScoreOptions
from tests.eem_stack_support import eem_stack

MODEL_HW = (64, 128)
FRAME_HW = (270, 480)  # not a multiple of the model's size: 4.22 x 3.75


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    cfg = ExportConfig(trace_hw=MODEL_HW, declare_input_size=True)
    torch.manual_seed(0)
    seg = export_segmentation(UNet(UNetConfig(width=4, depth=2)), tmp / "seg" / "model.onnx", cfg)
    torch.manual_seed(1)
    depth = export_depth(DepthNet(DepthConfig(width=4, depth=2)), tmp / "depth" / "model.onnx", cfg)
    repo = ModelRepository(tmp / "repo")
    repo.publish("segmentation", seg.path, build_config("segmentation", seg.spec))
    # export_depth does not declare its size (segxal/export.py): declared here, as bench/rank_throughput does
    repo.publish("depth", depth.path, build_config("depth", replace(depth.spec, input_size=MODEL_HW)))
    yy, xx = np.mgrid[0:FRAME_HW[0], 0:FRAME_HW[1]]
    rng = np.random.default_rng(3)
    image = np.stack([(xx * 255 // FRAME_HW[1]), (yy * 255 // FRAME_HW[0]), ((xx + yy) % 97) * 2], -1)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)  # [H, W, 3]
    frame = tmp / "frames" / "f.png"
    imageio.write_png(frame, image)
    with eem_stack(repo.root, tmp / "frames") as client:
        yield {"client": client, "frame": str(frame), "image": image, "seg": seg.path, "depth": depth.path}


def _in_process(stack, opts: EEMOptions):
    """The same maths in process at the model's size: the frame resized once, both forwards."""
    small = resize_image(stack["image"], MODEL_HW)[None]  # [1, 64, 128, 3]
    seg = ort.InferenceSession(str(stack["seg"]), providers=["CPUExecutionProvider"])
    depth = ort.InferenceSession(str(stack["depth"]), providers=["CPUExecutionProvider"])
    labels, ebu, cam = seg.run(["labels", "ebu", "cam"], {"image": small})
    (inv,) = depth.run(["inverse_depth"], {"image": small})
    return score_frame(labels[0], ebu[0], cam[0], inv[0], opts)  # regions at 64 x 128


@pytest.mark.parametrize("opts", [EEMOptions(), EEMOptions(threshold_mode="fixed", threshold=0.3, min_region_area=0)],
                         ids=["otsu", "fixed-no-floor"])
def test_regions_come_back_in_frame_coordinates(stack, opts):
    result = stack["client"].score(stack["frame"], ScoreOptions(eem=opts, regions=True, labels=True,
                                                                maps=("eem",), map_bits=16)).raise_for_error()
    ref = _in_process(stack, opts)
    assert (result.height, result.width) == FRAME_HW
    assert result.score == pytest.approx(ref.score, abs=1e-5)  # the mean over the model-size EEM
    assert len(result.regions) == len(ref.regions) > 0
    for got, want in zip(result.regions, ref.regions):
        mask = rle_to_mask(got.rle)  # [H, W]
        assert got.rle["size"] == list(FRAME_HW)
        # the frame mask is the model-size component upsampled nearest-neighbour, nothing else
        np.testing.assert_array_equal(mask, resize_nearest(rle_to_mask(want.rle), FRAME_HW))
        x, y, w, h = got.bbox
        assert 0 <= x and 0 <= y and x + w <= FRAME_HW[1] and y + h <= FRAME_HW[0]
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert got.area == int(mask.sum()) > want.area  # frame pixels, ~15.8 per model pixel
        assert all(0 <= px < FRAME_HW[1] and 0 <= py < FRAME_HW[0] for px, py in got.polygon)
        assert all(mask[py, px] for px, py in got.polygon)  # the outline lies on the mask
        assert (got.class_id, got.class_name) == (want.class_id, want.class_name)
        assert got.mean_eem == pytest.approx(want.mean_eem, abs=1e-5)
    # maps and labels: resized to the frame at encode time only
    np.testing.assert_array_equal(result.labels(), resize_nearest(ref.labels, FRAME_HW))
    np.testing.assert_allclose(result.map("eem"), resize_map(ref.eem, FRAME_HW), atol=1.0 / 65535 + 1e-6)


def test_frame_regions_are_the_model_size_regions_upsampled():
    """extract_regions(frame_hw=...) keeps the same components (floor and cap at the model's size)
    and reports each as resize_nearest of its model-size mask, at integer and fractional scales."""
    rng = np.random.default_rng(7)
    eem = resize_map(rng.random((8, 16), dtype=np.float32), (32, 64))  # smooth blobs
    labels = rng.integers(0, 19, (32, 64), dtype=np.uint8)
    at_model = extract_regions(eem, labels, threshold=0.6, min_area=3, max_regions=4)
    assert 1 < len(at_model) <= 4
    for frame_hw in [(128, 256), (75, 130), (32, 64)]:
        at_frame = extract_regions(eem, labels, threshold=0.6, min_area=3, max_regions=4, frame_hw=frame_hw)
        assert [r.mean_eem for r in at_frame] == [r.mean_eem for r in at_model]
        for got, want in zip(at_frame, at_model):
            mask = resize_nearest(rle_to_mask(want.rle), frame_hw)
            np.testing.assert_array_equal(rle_to_mask(got.rle), mask)
            assert got.area == int(mask.sum())
    assert extract_regions(eem, labels, threshold=0.6, min_area=3, max_regions=4, frame_hw=(32, 64)) == at_model
