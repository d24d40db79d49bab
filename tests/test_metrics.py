"""mIoU against cityscapesscripts' own evaluator, DICE on cases known by construction."""
import numpy as np
import pytest
from PIL import Image

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from segxal.labels import CLASS_NAMES, IGNORE, NUM_CLASSES, label_ids_to_train_ids, train_ids_to_label_ids
from segxal.metrics import confusion_matrix, iou_per_class, macro_dice, mean_iou


def _cityscapes_ious(tmp_path, preds_label_ids, gts_label_ids):
    """Per-trainId IoU as cityscapesscripts computes it from labelId PNG files."""
    args = cs_eval.args
    args.evalInstLevelScore = False
    args.quiet = True
    args.JSONOutput = False
    cm = cs_eval.generateMatrix(args)
    for i, (p, g) in enumerate(zip(preds_label_ids, gts_label_ids)):
        pf, gf = tmp_path / f"p{i}.png", tmp_path / f"g{i}_gtFine_labelIds.png"
        Image.fromarray(p).save(pf)
        Image.fromarray(g).save(gf)
        cs_eval.evaluatePair(str(pf), str(gf), cm, {}, {}, args)
    from segxal.labels import TRAIN_ID_TO_LABEL_ID
    return np.array([cs_eval.getIouScoreForLabel(int(l), cm, args) for l in TRAIN_ID_TO_LABEL_ID])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_equals_cityscapesscripts(tmp_path, seed):
    rng = np.random.default_rng(seed)
    all_ids = np.arange(0, 34, dtype=np.uint8)  # every Cityscapes labelId, ignored ones included
    gts, preds = [], []
    for _ in range(3):
        g = rng.choice(all_ids, size=(32, 48)).astype(np.uint8)
        # predictions: mostly right, some wrong, some predicting ignored ids
        p = np.where(rng.random(g.shape) < 0.6, g, rng.choice(all_ids, size=g.shape)).astype(np.uint8)
        gts.append(g)
        preds.append(p)
    ref = _cityscapes_ious(tmp_path, preds, gts)
    cm = sum(confusion_matrix(label_ids_to_train_ids(p), label_ids_to_train_ids(g))
             for p, g in zip(preds, gts))
    ours = iou_per_class(cm)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours[~np.isnan(ours)], ref[~np.isnan(ref)], atol=1e-6)
    assert abs(mean_iou(cm) - np.nanmean(ref)) < 1e-6


def test_absent_class_is_nan_not_zero():
    gt = np.zeros((4, 4), np.uint8)
    cm = confusion_matrix(gt.copy(), gt)
    ious = iou_per_class(cm)
    assert ious[0] == 1.0 and np.isnan(ious[1:]).all() and mean_iou(cm) == 1.0


def test_ignore_pixels_do_not_count():
    gt = np.array([[0, IGNORE]], np.uint8)
    assert mean_iou(confusion_matrix(np.array([[0, 5]], np.uint8), gt)) == 1.0


def test_train_id_round_trip_and_unknown_ids_rejected():
    tid = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(1, -1)
    assert np.array_equal(label_ids_to_train_ids(train_ids_to_label_ids(tid)), tid)
    from segxal.errors import InvalidInput
    with pytest.raises(InvalidInput, match="unknown Cityscapes label ids"):
        label_ids_to_train_ids(np.array([[7, 200]], np.uint8), where="x.png")
    assert len(CLASS_NAMES) == 19


def test_macro_dice_known_cases():
    a = np.array([[0, 0, 1, 1]], np.uint8)
    assert macro_dice(a, a) == 1.0
    # class 0: pred {0,1}, ann {0}: dice 2*1/(2+1); class 1: pred {2,3}, ann {1,2,3}: 2*2/(2+3)
    p = np.array([[0, 0, 1, 1]], np.uint8)
    ann = np.array([[0, 1, 1, 1]], np.uint8)
    assert macro_dice(p, ann) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # pixels the annotation leaves as ignore do not count
    assert macro_dice(p, np.array([[0, IGNORE, 1, 1]], np.uint8)) == 1.0
    assert macro_dice(p, np.full_like(p, IGNORE)) == 1.0
