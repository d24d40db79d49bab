"""Oracles and the shared per-frame EEM scoring, on inputs whose answer is known."""
import numpy as np
import pytest

from segxal.al.oracles import calibrate_tau, machine_oracle, simulated_human
from segxal.eem.options import EEMOptions
from segxal.eem.frame import score_frame
from segxal.al.strategies import strategy_score
from segxal.errors import InvalidInput
from segxal.labels import IGNORE, NAME_TO_TRAIN_ID


def test_machine_oracle_keeps_only_confident_pixels():
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    pmax = np.array([[0.95, 0.5], [0.9, 0.89]], np.float16)
    ann = machine_oracle(labels, pmax, tau=0.9)
    assert ann.mask.tolist() == [[1, IGNORE], [3, IGNORE]]
    assert ann.cost.pixels == 0 and ann.cost.frames == 1 and not ann.human.any()
    with pytest.raises(InvalidInput):
        machine_oracle(labels, pmax, tau=1.5)


def test_calibrated_tau_is_the_lowest_threshold_that_reaches_the_precision():
    # 10 labeled pixels, confidence 1.0 ... 0.1; the prediction is wrong at 0.7 and at 0.3 and below
    pmax = np.linspace(1.0, 0.1, 10).astype(np.float32)
    gt = np.zeros(10, np.uint8)
    pred = gt.copy()
    pred[[3, 7, 8, 9]] = 1
    # top 6 (>= 0.5): 5 right of 6 = 0.83; top 7 (>= 0.4): 6/7 = 0.857; top 8: 6/8 = 0.75
    assert calibrate_tau(pmax, pred, gt, precision=0.85) == pytest.approx(0.4)
    assert calibrate_tau(pmax, pred, gt, precision=0.75) == pytest.approx(0.3)
    assert calibrate_tau(pmax, pred, gt, precision=1.0) == pytest.approx(0.8)  # top 3 all right
    # unlabeled pixels do not count; ties are taken or left together
    gt2 = gt.copy()
    gt2[3] = IGNORE  # the wrong pixel at 0.7 is not labeled: the top 7 labeled are 6 right of 6... then 0.3
    assert calibrate_tau(pmax, pred, gt2, precision=1.0) == pytest.approx(0.4)
    tied = np.array([0.9, 0.9, 0.5], np.float32)
    assert calibrate_tau(tied, np.array([0, 1, 0]), np.zeros(3, np.uint8), precision=0.6) == 0.5
    assert calibrate_tau(tied, np.array([0, 1, 0]), np.zeros(3, np.uint8), precision=0.7) == float("inf")
    # no threshold reaches it: nothing is pseudo-labeled, and the oracle returns an empty mask
    assert calibrate_tau(pmax, np.ones(10, np.uint8), gt, 0.5) == float("inf")
    ann = machine_oracle(pred.reshape(2, 5), pmax.reshape(2, 5).astype(np.float16), float("inf"))
    assert (ann.mask == IGNORE).all()
    with pytest.raises(InvalidInput):
        calibrate_tau(pmax, pred, np.full(10, IGNORE, np.uint8))
    with pytest.raises(InvalidInput):
        calibrate_tau(pmax, pred[:5], gt)
    with pytest.raises(InvalidInput):
        calibrate_tau(pmax, pred, gt, precision=0.0)


def test_simulated_human_copies_ground_truth_inside_regions_only():
    gt = np.full((4, 6), 7, np.uint8)
    pred = np.full((4, 6), 2, np.uint8)
    region = np.zeros((4, 6), bool)
    region[1:3, 2:5] = True
    ann = simulated_human(gt, pred, [region])
    assert (ann.mask[region] == 7).all() and (ann.mask[~region] == 2).all()
    assert ann.cost.pixels == 6 and ann.cost.regions == 1
    ann = simulated_human(gt, pred, [region], outside="ignore")
    assert (ann.mask[~region] == IGNORE).all()
    whole = simulated_human(gt, pred, None)
    assert (whole.mask == 7).all() and whole.cost.pixels == 24


def test_score_frame_finds_the_uncertain_near_blob():
    h, w = 32, 64
    labels = np.full((h, w), NAME_TO_TRAIN_ID["road"], np.uint8)
    labels[:8] = NAME_TO_TRAIN_ID["sky"]
    ebu = np.zeros((h, w), np.float32)
    ebu[20:28, 10:20] = 1.0  # an uncertain object
    cam = np.zeros((h, w), np.float16)
    cam[20:28, 10:20] = 1.0
    inv = np.tile(np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None], (1, w))  # nearer at the bottom
    f = score_frame(labels, ebu, cam, inv, EEMOptions(threshold_mode="fixed", threshold=0.3))
    assert f.proximity[:8].max() == 0  # sky is never near
    assert len(f.regions) == 1
    x, y, bw, bh = f.regions[0].bbox
    assert (x, y, bw, bh) == (10, 20, 10, 8)
    assert f.score == pytest.approx(f.eem.mean())
    assert strategy_score("entropy", f) == pytest.approx(ebu.mean())
    assert strategy_score("eem-topq", f) >= strategy_score("eem", f)


@pytest.mark.parametrize("bad", [dict(alpha=0.7, beta=0.7), dict(threshold=-1.0), dict(score_mode="max")])
def test_invalid_options_are_refused_with_a_message(bad):
    with pytest.raises(InvalidInput):
        EEMOptions(**bad).validate()
