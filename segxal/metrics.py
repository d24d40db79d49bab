"""Segmentation metrics: confusion matrix, IoU/mIoU (as cityscapesscripts computes them), DICE.

mIoU follows cityscapesscripts' evalPixelLevelSemanticLabeling: per class
IoU = TP / (TP + FP + FN) over the whole split, pixels whose ground truth is ignore (255)
do not count, a class with TP + FP + FN = 0 is NaN and left out of the mean.
"""
from __future__ import annotations

import numpy as np

from segxal.labels import CLASS_NAMES, IGNORE, NUM_CLASSES


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Accumulable confusion matrix [gt, pred] (int64) for trainId arrays of any equal shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    keep = gt != IGNORE
    gt, pred = gt[keep], pred[keep]
    # predictions outside 0..C-1 count as wrong for every class: put them in an overflow column
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    cm = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return cm.reshape(num_classes, num_classes + 1)[:, :num_classes + 1]


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """[C] IoU from a [C, C(+1)] confusion matrix; NaN where the class is absent in gt and pred."""
    c = cm.shape[0]
    tp = np.diag(cm[:, :c]).astype(np.float64)
    fn = cm.sum(axis=1) - tp
    fp = cm[:, :c].sum(axis=0) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def iou_report(cm: np.ndarray, class_names: tuple[str, ...] | list[str] | None = None) -> dict:
    """{'miou': float, 'per_class': {name: iou or None}} for JSON reports.

    Args:
        cm: confusion matrix [C, C(+1)].
        class_names: the model's classes (None: Cityscapes trainIds, or class_<i> when C differs).
    """
    ious = iou_per_class(cm)
    names = class_names if class_names is not None else (
        CLASS_NAMES if len(ious) == len(CLASS_NAMES) else [f"class_{i}" for i in range(len(ious))])
    if len(names) != len(ious):
        raise ValueError(f"{len(names)} class names for a {len(ious)}-class confusion matrix")
    return {
        "miou": mean_iou(cm),
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, ious)},
    }


def macro_dice(pred: np.ndarray, ann: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Macro DICE between a prediction and an annotation of one frame (trainIds).

    Pixels the annotation marks ignore do not count; the mean runs over classes present in
    either map. Two empty maps (everything ignored) agree perfectly: 1.0.
    """
    keep = ann != IGNORE
    p, a = pred[keep].astype(np.int64), ann[keep].astype(np.int64)
    if p.size == 0:
        return 1.0
    p = np.where(p < num_classes, p, num_classes)
    inter = np.bincount(a[p == a], minlength=num_classes + 1)[:num_classes]
    cnt_p = np.bincount(p, minlength=num_classes + 1)[:num_classes]
    cnt_a = np.bincount(a, minlength=num_classes + 1)[:num_classes]
    present = (cnt_p + cnt_a) > 0
    dice = 2.0 * inter[present] / (cnt_p[present] + cnt_a[present])
    return float(dice.mean())
