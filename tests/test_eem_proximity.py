"""Proximity (segxal.eem.proximity): sky and invalid depth give 0, monotone in inverse depth, known values."""
import numpy as np
import pytest

from segxal.errors import InvalidInput
from segxal.eem.proximity import SKY_TRAIN_ID, proximity_from_inverse_depth, proximity_from_metric_depth


def _ramp(h: int = 20, w: int = 30) -> np.ndarray:
    return np.linspace(0.1, 5.0, h * w, dtype=np.float32).reshape(h, w)  # [H, W], inverse depth


def test_inverse_depth_is_monotone_and_in_range():
    inv = np.random.default_rng(0).gamma(2.0, 1.0, size=(40, 50)).astype(np.float32)  # [H, W]
    prox = proximity_from_inverse_depth(inv)
    order = np.argsort(inv, axis=None)
    assert prox.dtype == np.float32 and prox.min() == 0.0 and prox.max() == 1.0
    assert np.all(np.diff(prox.ravel()[order]) >= 0)  # nearer never gets less proximity
    # between the robust bounds the map is the affine rescale
    lo, hi = np.percentile(inv, [2, 98])
    mid = (inv > lo) & (inv < hi)
    np.testing.assert_allclose(prox[mid], (inv[mid] - lo) / (hi - lo), atol=1e-6)


def test_sky_and_invalid_get_zero():
    inv = _ramp()
    inv[0, :5] = [0.0, -1.0, np.nan, np.inf, -np.inf]
    sky = np.zeros(inv.shape, bool)
    sky[1, :] = True
    labels = np.zeros(inv.shape, np.uint8)
    labels[-1, :] = SKY_TRAIN_ID  # the nearest row, predicted sky
    prox = proximity_from_inverse_depth(inv, sky_mask=sky, labels=labels)
    assert np.isfinite(prox).all()
    assert (prox[0, :5] == 0).all() and (prox[1] == 0).all() and (prox[-1] == 0).all()
    assert prox[-2].max() == 1.0  # the bounds come from valid non-sky pixels only
    metric = proximity_from_metric_depth(1.0 / np.where(inv > 0, inv, 1.0), sky_mask=sky, labels=labels)
    assert (metric[1] == 0).all() and (metric[-1] == 0).all()
    assert (proximity_from_metric_depth(np.array([[0.0, -2.0, np.nan, np.inf]])) == 0).all()


def test_metric_depth_known_values():
    depth = np.array([[0.001, 5.0, 20.0, 50.0]], dtype=np.float32)  # [1, 4] metres
    np.testing.assert_allclose(proximity_from_metric_depth(depth, tau=20.0), np.exp(-depth / 20.0), rtol=1e-6)
    assert proximity_from_metric_depth(depth, tau=10.0)[0, 1] == pytest.approx(np.exp(-0.5), rel=1e-6)


def test_batched_equals_per_image_and_constant_image():
    rng = np.random.default_rng(1)
    batch = rng.uniform(0.1, 3.0, size=(3, 8, 9)).astype(np.float32)  # [B, H, W]
    batch[2] = 0.7  # one depth everywhere: nothing is farther, proximity 1
    out = proximity_from_inverse_depth(batch)
    for img, res in zip(batch, out):
        np.testing.assert_array_equal(res, proximity_from_inverse_depth(img))
    assert (out[2] == 1.0).all()
    assert (proximity_from_inverse_depth(np.zeros((4, 4))) == 0).all()  # no valid pixel


def test_bad_inputs_are_rejected():
    with pytest.raises(InvalidInput, match="tau"):
        proximity_from_metric_depth(np.ones((2, 2)), tau=0.0)
    with pytest.raises(InvalidInput, match="low_pct"):
        proximity_from_inverse_depth(np.ones((2, 2)), low_pct=50, high_pct=10)
    with pytest.raises(InvalidInput, match="sky_mask"):
        proximity_from_inverse_depth(np.ones((2, 2)), sky_mask=np.ones((3, 3), bool))
    with pytest.raises(InvalidInput, match=r"\[H, W\]"):
        proximity_from_metric_depth(np.ones(5))
