"""PAE, EEM and frame score (segxal.eem.fuse) on arrays whose answer is known by construction."""
import numpy as np
import pytest

from segxal.errors import InvalidInput
from segxal.eem.fuse import eem, frame_score, pae


def test_pae_is_min_max_of_the_product():
    cam = np.array([[0.0, 0.5], [1.0, 1.0]], dtype=np.float16)
    prox = np.array([[1.0, 1.0], [0.5, 0.0]], dtype=np.float32)
    out = pae(cam, prox)  # product [[0, .5], [.5, 0]] -> already spans [0, 0.5]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 1.0], [1.0, 0.0]])
    assert (pae(np.ones((3, 3)), np.full((3, 3), 0.4)) == 0).all()  # constant: no hot spot


def test_pae_batched_equals_per_image():
    rng = np.random.default_rng(0)
    cam, prox = rng.random((3, 6, 7)), rng.random((3, 6, 7))  # [B, H, W]
    batched = pae(cam, prox)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], pae(cam[i], prox[i]))
    assert batched.min(axis=(1, 2)).max() == 0.0 and batched.max(axis=(1, 2)).min() == 1.0


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.5), (1.0, 0.0), (0.3, 0.7)])
def test_eem_is_the_weighted_sum(alpha, beta):
    ebu = np.array([[0.2, 1.0]], dtype=np.float16)
    pae_map = np.array([[0.6, 0.0]], dtype=np.float16)
    out = eem(ebu, pae_map, alpha, beta)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, alpha * ebu.astype(np.float32) + beta * pae_map.astype(np.float32), atol=1e-7)


def test_eem_rejects_shape_mismatch_and_nan():
    with pytest.raises(InvalidInput, match="shape"):
        eem(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(InvalidInput, match="NaN"):
        eem(np.full((2, 2), np.nan), np.zeros((2, 2)))


def test_frame_score_mean_and_topq():
    m = np.arange(100, dtype=np.float32).reshape(10, 10) / 100  # 0.00 .. 0.99
    assert frame_score(m) == pytest.approx(0.495)
    assert frame_score(m, "topq", q=0.05) == pytest.approx(np.mean([0.95, 0.96, 0.97, 0.98, 0.99]))
    assert frame_score(m, "topq", q=0.07) == pytest.approx(0.96)  # exactly 7 pixels, not 8
    assert frame_score(m, "topq", q=0.001) == pytest.approx(0.99)  # at least one pixel
    assert frame_score(m, "topq", q=1.0) == pytest.approx(frame_score(m))
    assert frame_score(m.astype(np.float16)) == pytest.approx(0.495, abs=1e-4)


def test_frame_score_batched_equals_per_image():
    maps = np.random.default_rng(0).random((4, 8, 8))  # [B, H, W]
    for mode in ("mean", "topq"):
        scores = frame_score(maps, mode, q=0.1)
        assert scores.shape == (4,)
        np.testing.assert_allclose(scores, [frame_score(m, mode, q=0.1) for m in maps], rtol=1e-12)


def test_frame_score_rejects_bad_arguments():
    with pytest.raises(InvalidInput, match="mode"):
        frame_score(np.zeros((2, 2)), "max")
    with pytest.raises(InvalidInput, match="q must be"):
        frame_score(np.zeros((2, 2)), "topq", q=0.0)


def test_gated_pae_gives_no_proximity_weight_to_a_near_confident_pixel():
    """score_frame's gate_proximity: proximity counts only where the model is unsure. Four pixels by
    construction, CAM alike: near & confident (the near road), near & unsure, far & unsure, far & confident."""
    import torch

    from segxal.eem.options import EEMOptions
    from segxal.eem.frame import score_frame
    from segxal.eem.ebu import entropy_uncertainty

    logits = torch.zeros(1, 19, 1, 4)  # [B, C, H, W]
    logits[0, 0, 0, [0, 3]] = 30.0  # confident "road" at columns 0 and 3
    logits[0, :4, 0, [1, 2]] = 1.0  # unsure between four classes at columns 1 and 2
    ebu = entropy_uncertainty(logits)[0].numpy()  # [1, 4]
    labels = logits[0].argmax(0).numpy().astype(np.uint8)  # no sky: proximity is the depth alone
    inv_depth = np.array([[1.0, 1.0, 0.1, 0.1]], np.float32)  # near, near, far, far
    cam = np.ones((1, 4), np.float32)
    plain = score_frame(labels, ebu, cam, inv_depth, EEMOptions(), with_regions=False)
    gated = score_frame(labels, ebu, cam, inv_depth, EEMOptions(), with_regions=False, gate_proximity=True)
    assert ebu[0, 0] < 1e-6 < 0.3 < ebu[0, 1]
    assert plain.pae[0, 0] == plain.pae[0, 1] == 1.0  # ungated: the near road is as hot as the unsure pixel
    assert gated.pae[0, 0] < 1e-4 and gated.pae[0, 1] == 1.0  # gated: near & sure gets nothing
    assert gated.pae[0, 2] < gated.pae[0, 1] and gated.pae[0, 3] < 1e-4  # far: proximity still matters
    assert gated.eem[0, 0] < gated.eem[0, 2] < gated.eem[0, 1]
    np.testing.assert_array_equal(plain.eem, score_frame(labels, ebu, cam, inv_depth, EEMOptions(),
                                                          with_regions=False).eem)  # off by default


def test_pae_gate_outside_unit_interval_is_a_clear_error():
    with pytest.raises(InvalidInput, match="gate must lie in"):
        pae(np.ones((2, 2)), np.ones((2, 2)), gate=np.full((2, 2), 2.0))
