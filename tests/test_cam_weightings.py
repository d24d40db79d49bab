"""The CAM weightings bench/cam_health.py measures (--weighting: the product's CAM methods and
explorations) are the published methods: each equals pytorch-grad-cam's class of that name at the same layer and target."""
from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM

from bench.cam_health import _explainer, all_weightings
from segxal.graph.traced_cam import as_grad_cam_target, make_target, resolve_layer
from segxal.models.external import FullResLogits
from tests.test_traced_cam import CAM_TOL, CLASS_NAMES, _frame, _model, _normalised

REFERENCE = {"gradcam": GradCAM, "hirescam": HiResCAM, "layercam": LayerCAM, "gradcam++": GradCAMPlusPlus}


def test_every_weighting_has_its_reference():
    assert set(all_weightings()) == set(REFERENCE)


@pytest.mark.parametrize("weighting", sorted(REFERENCE))
@pytest.mark.parametrize("target", ["ebu-gradient", "class-balanced"])
def test_each_weighting_equals_pytorch_grad_cams_method_of_that_name(weighting, target):
    model = _model("smp_deeplabv3plus")
    image = _frame()
    explainer = _explainer(weighting, model, "encoder.layer3", make_target(target, CLASS_NAMES), "input")
    cam = explainer(torch.from_numpy(image[None]))[2][0].float().numpy()
    module = resolve_layer(model, "encoder.layer3")[0]
    with REFERENCE[weighting](model=FullResLogits(model).eval(), target_layers=[module]) as method:
        ref = method(input_tensor=_normalised(image), targets=[as_grad_cam_target(make_target(target, CLASS_NAMES))])[0]
    assert ref.std() > 0.05  # alive, so the comparison means something
    assert abs(cam - ref).max() < CAM_TOL
