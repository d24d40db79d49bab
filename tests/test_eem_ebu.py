"""EBU (segxal.eem.ebu): known values by construction, over shapes and class dimensions."""
import math

import pytest
import torch

from segxal.errors import InvalidInput
from segxal.eem.ebu import entropy_uncertainty, prediction_statistics

# (shape, class dim): 2-D [N, C], 4-D [B, C, H, W], 5-D [B, C, D, H, W], class dim last
SHAPES = [((5, 19), 1), ((2, 19, 4, 6), 1), ((2, 3, 2, 4, 5), 1), ((3, 4, 7), -1), ((2, 2, 3, 3), 1)]


@pytest.mark.parametrize("shape, dim", SHAPES)
def test_uniform_probabilities_give_one(shape, dim):
    logits = torch.full(shape, 3.7)
    labels, u, pmax = prediction_statistics(logits, dim)
    assert u.shape == pmax.shape == labels.shape == logits.sum(dim).shape
    assert (labels == 0).all()  # ties go to the lowest class, as argmax
    torch.testing.assert_close(u, torch.ones_like(u), atol=1e-6, rtol=0)
    torch.testing.assert_close(pmax, torch.full_like(pmax, 1 / shape[dim]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape, dim", SHAPES)
def test_one_hot_probabilities_give_zero(shape, dim):
    n_pixels = torch.Size(shape).numel() // shape[dim]
    hot = torch.randint(0, shape[dim], (n_pixels,))  # [N]
    flat = torch.zeros(n_pixels, shape[dim])  # [N, C]
    flat[torch.arange(n_pixels), hot] = 1e4  # p is exactly one-hot in float32
    moved = list(shape)
    moved.append(moved.pop(dim))
    logits = flat.reshape(moved).movedim(-1, dim)  # shape, classes along dim
    labels, u, pmax = prediction_statistics(logits, dim)
    assert torch.equal(labels.flatten(), hot)
    assert torch.isfinite(u).all()
    assert u.abs().max() == 0.0
    assert (pmax == 1.0).all()


@pytest.mark.parametrize("shape, dim", SHAPES)
def test_matches_torch_categorical(shape, dim):
    logits = torch.randn(shape, dtype=torch.float64) * 3
    reference = torch.distributions.Categorical(logits=logits.movedim(dim, -1))
    labels, u, pmax = prediction_statistics(logits, dim)
    torch.testing.assert_close(u, reference.entropy() / math.log(shape[dim]), atol=1e-12, rtol=0)
    torch.testing.assert_close(pmax, reference.probs.amax(-1), atol=1e-12, rtol=0)
    assert torch.equal(labels, logits.argmax(dim))
    torch.testing.assert_close(entropy_uncertainty(logits, dim), u, atol=0, rtol=0)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[-1e30, 0.0, 1e30], [-80.0, -80.0, 80.0], [1e-3, 0.0, 0.0]]).T[None]  # [1, 3, 3]
    labels, u, pmax = prediction_statistics(logits)
    assert torch.isfinite(u).all() and torch.isfinite(pmax).all()
    assert u[0, :2].max() == 0 and pmax[0, :2].min() == 1
    assert u[0, 2] == pytest.approx(1.0, abs=1e-6)


def test_two_class_known_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)  # 0.8113
    _, u, pmax = prediction_statistics(logits, 1)
    assert u.item() == pytest.approx(expected, abs=1e-6)
    assert pmax.item() == pytest.approx(0.75, abs=1e-6)


def test_float16_logits_stay_in_range():
    logits = (torch.randn(2, 19, 8, 8) * 20).half()
    u = entropy_uncertainty(logits)
    assert u.dtype == torch.float16 and torch.isfinite(u).all() and u.min() >= 0 and u.max() <= 1


def test_single_class_is_rejected():
    with pytest.raises(InvalidInput, match="at least 2 classes"):
        entropy_uncertainty(torch.zeros(2, 1, 4, 4))
