"""Acquisition functions for active learning: arrays in, scores or picks out (no model, no I/O).

Frame scores (higher = query first) are reduced from per-pixel maps; batch selection turns scores
(and, for the diversity terms, pooled features) into the indices to label. Each function cites the
paper it implements. The benchmark (bench.albench.harness) feeds them the EEM maps of
segxal.eem.explain.ExplainedSegmenter and segxal.eem.frame, so they rank with exactly the maths
the services use.

None of these functions sees ground truth: they get model outputs and features only.
"""
from __future__ import annotations

import math

import numpy as np

from segxal.eem.fuse import frame_score
from segxal.eem.frame import FrameEEM
from segxal.errors import InvalidInput
from segxal.labels import IGNORE, NUM_CLASSES


# ------------------------------------------------------------------ per-pixel uncertainty maps

def least_confidence_map(pmax: np.ndarray) -> np.ndarray:
    """Least confidence 1 - max_c p_c per pixel.

    References:
        Culotta & McCallum, "Reducing labeling effort for structured prediction tasks", AAAI 2005;
        Settles, "Active Learning Literature Survey", 2009 (sec. 3.1).

    Args:
        pmax: max softmax probability, [H, W] or [B, H, W], in [0, 1].

    Returns:
        float32 map of the same shape, in [0, 1].
    """
    return (1.0 - np.asarray(pmax, dtype=np.float32)).astype(np.float32)


def bald_map(probs, eps: float = 1e-12):
    """BALD mutual information between the prediction and the weights, per pixel, from MC samples:
    I = H(mean_t p_t) - mean_t H(p_t), in nats, >= 0.

    High where the dropout samples disagree (each confident, in different classes), low where they
    agree, even on a flat (uncertain) distribution: epistemic, not aleatoric, uncertainty.

    References:
        Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning",
        arXiv 1112.5745, 2011; Gal, Islam & Ghahramani, "Deep Bayesian Active Learning with Image
        Data", ICML 2017 (MC dropout as the posterior).

    Args:
        probs: softmax samples [T, C, ...] (T >= 2 dropout samples, C classes, any spatial shape),
            a numpy array or a torch tensor (then computed on its device, returned as a tensor).

    Returns:
        float32 map [...] (the spatial shape), >= 0, of the input's kind.

    Raises:
        InvalidInput: fewer than 2 samples or fewer than 2 dimensions.
    """
    if probs.ndim < 2 or probs.shape[0] < 2:
        raise InvalidInput(f"bald_map accepts softmax samples [T, C, ...] with T >= 2, got shape {tuple(probs.shape)}")
    if not isinstance(probs, np.ndarray) and hasattr(probs, "log"):  # a torch tensor
        p = probs.float()
        mean = p.mean(0)  # [C, ...]
        h_mean = -(mean * (mean + eps).log()).sum(0)  # [...]
        mean_h = -(p * (p + eps).log()).sum(1).mean(0)  # [...]
        return (h_mean - mean_h).clamp_min(0.0)
    p = np.asarray(probs, dtype=np.float64)
    mean = p.mean(axis=0)  # [C, ...]
    h_mean = -(mean * np.log(mean + eps)).sum(axis=0)  # [...]
    mean_h = -(p * np.log(p + eps)).sum(axis=1).mean(axis=0)  # [...]
    return np.maximum(h_mean - mean_h, 0.0).astype(np.float32)


def predicted_class_weights(label_maps: np.ndarray) -> np.ndarray:
    """Class weights from the model's own predictions over the pool (never ground truth):
    w_c = 1 / ln(1.02 + p_c), p_c the share of pool pixels predicted as c, scaled to mean 1 over the
    predicted classes; classes never predicted get the largest weight.

    References:
        Paszke et al., "ENet", arXiv 1606.02147, 2016 (the weighting, here on predicted shares);
        class-balanced acquisition in the spirit of Casanova et al., "Reinforced Active Learning for
        Image Segmentation", ICLR 2020 (rare classes drive region selection).

    Args:
        label_maps: predicted trainIds, any shape (0..C-1; 255 is not counted).

    Returns:
        float32 [NUM_CLASSES] weights, indexable by trainId.
    """
    labels = np.asarray(label_maps).ravel()
    labels = labels[labels != IGNORE].astype(np.int64)
    counts = np.bincount(labels, minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.float64)  # [C]
    share = counts / max(1.0, counts.sum())
    w = 1.0 / np.log(1.02 + share)  # [C]
    seen = counts > 0
    if seen.any():
        w /= w[seen].mean()
    return w.astype(np.float32)


def class_balanced(score_map: np.ndarray, labels: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """A per-pixel score reweighted by the weight of the pixel's predicted class (255 -> weight 0).

    Keeps a frame score from being saturated by the long sky/road/building boundaries every frame
    has: pixels of rare predicted classes (person, rider, bicycle) count more.

    Args:
        score_map: [H, W] or [B, H, W].
        labels: predicted trainIds, same shape.
        class_weights: [NUM_CLASSES] (predicted_class_weights).

    Returns:
        float32 map of the same shape.

    Raises:
        InvalidInput: shapes differ or the weights are not [NUM_CLASSES].
    """
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.shape != np.shape(labels):
        raise InvalidInput(f"score map {score_map.shape} and labels {np.shape(labels)} differ in shape")
    class_weights = np.asarray(class_weights, dtype=np.float32)
    if class_weights.shape != (NUM_CLASSES,):
        raise InvalidInput(f"class_weights must be [{NUM_CLASSES}], got {class_weights.shape}")
    lut = np.zeros(256, np.float32)  # trainId -> weight, 255 (ignore) -> 0
    lut[:NUM_CLASSES] = class_weights
    return score_map * lut[np.asarray(labels, dtype=np.uint8)]


# ------------------------------------------------------------------ batch selection

def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, ties broken by the lower index (deterministic).

    Raises:
        InvalidInput: k < 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if k < 0:
        raise InvalidInput(f"k must be >= 0, got {k}")
    order = np.lexsort((np.arange(scores.size), -scores))  # by -score, then index
    return order[:k].tolist()


def k_center_greedy(features: np.ndarray, k: int, centers: np.ndarray | None = None,
                    first: int | None = None) -> list[int]:
    """Core-set selection: greedily add the point farthest (Euclidean) from every chosen point and
    every existing center, k times (the 2-approximation of the k-center problem).

    References:
        Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
        ICLR 2018 (Algorithm 1, k-Center-Greedy).

    Args:
        features: candidates [N, D].
        k: points to choose (at most N).
        centers: features of what is already labeled [M, D] (M may be 0), or None.
        first: when there are no centers, the first pick (default: the point farthest from the mean).

    Returns:
        k distinct indices into features, in the order they were chosen.

    Raises:
        InvalidInput: k outside [0, N] or feature dimensions that differ.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidInput(f"features must be [N, D], got shape {x.shape}")
    if not 0 <= k <= len(x):
        raise InvalidInput(f"k must be in [0, {len(x)}], got {k}")
    if k == 0:
        return []
    min_d = np.full(len(x), np.inf)  # [N] distance to the nearest center
    if centers is not None and len(centers):
        c = np.asarray(centers, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != x.shape[1]:
            raise InvalidInput(f"centers must be [M, {x.shape[1]}], got shape {c.shape}")
        for s in range(0, len(c), 256):  # chunks keep the [N, chunk] distance matrix small
            d = np.linalg.norm(x[:, None, :] - c[None, s:s + 256, :], axis=2)  # [N, chunk]
            min_d = np.minimum(min_d, d.min(axis=1))
    chosen: list[int] = []
    if not np.isfinite(min_d).any():
        i = first if first is not None else int(np.argmax(np.linalg.norm(x - x.mean(0), axis=1)))
        chosen.append(i)
        min_d = np.linalg.norm(x - x[i], axis=1)
    while len(chosen) < k:
        min_d[chosen] = -1.0  # never re-pick
        i = int(np.argmax(min_d))
        chosen.append(i)
        min_d = np.minimum(min_d, np.linalg.norm(x - x[i], axis=1))
    return chosen


def diverse_top_k(scores: np.ndarray, features: np.ndarray, k: int, candidates_factor: float = 4.0,
                  centers: np.ndarray | None = None) -> list[int]:
    """Informative and diverse: pre-filter the top `candidates_factor * k` by score, then choose k of
    them by k-center greedy on the features (already-labeled features count as centers), the first
    being the best-scored candidate. Near-duplicates (e.g. consecutive frames of one drive log, which
    score alike) are not both chosen while farther candidates remain.

    References:
        Zhdanov, "Diverse mini-batch Active Learning", arXiv 1901.05954, 2019 (pre-filter by
        informativeness, then spread); Sener & Savarese, ICLR 2018 (k-center greedy).

    Args:
        scores: [N] acquisition scores.
        features: [N, D] pooled features.
        k: picks.
        candidates_factor: size of the pre-filtered set relative to k (>= 1).
        centers: [M, D] features of the labeled set, or None.

    Returns:
        k indices into scores.

    Raises:
        InvalidInput: k outside [0, N], candidates_factor < 1, or mismatched shapes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    features = np.asarray(features)
    if features.shape[0] != scores.size:
        raise InvalidInput(f"{scores.size} scores but {features.shape[0]} feature rows")
    if candidates_factor < 1:
        raise InvalidInput(f"candidates_factor must be >= 1, got {candidates_factor}")
    if not 0 <= k <= scores.size:
        raise InvalidInput(f"k must be in [0, {scores.size}], got {k}")
    cand = top_k(scores, min(scores.size, max(k, math.ceil(candidates_factor * k))))
    first = 0 if centers is None or not len(centers) else None
    picked = k_center_greedy(features[cand], k, centers=centers, first=first)
    return [cand[i] for i in picked]


def sequence_capped_top_k(scores: np.ndarray, groups: list[str], k: int, cap: int) -> list[int]:
    """The k best scores with at most `cap` picks per group (drive-log sequence); when every group
    is full and picks remain, the cap is lifted for the rest (best scores first).

    A cheap diversity term for drive logs, whose consecutive frames are near-duplicates that score
    alike (cf. the sequence-level redundancy in Kim et al., "Active learning for segmentation of
    video frames", and the batch-diversity argument of Zhdanov 2019).

    Args:
        scores: [N].
        groups: N group names (Frame.sequence).
        k: picks.
        cap: most picks per group (>= 1) before the cap is lifted.

    Returns:
        k indices, best first within the capped pass.

    Raises:
        InvalidInput: lengths differ, k outside [0, N], cap < 1.
    """
    if len(groups) != np.size(scores):
        raise InvalidInput(f"{np.size(scores)} scores but {len(groups)} groups")
    if cap < 1:
        raise InvalidInput(f"cap must be >= 1, got {cap}")
    order = top_k(scores, np.size(scores))
    if not 0 <= k <= len(order):
        raise InvalidInput(f"k must be in [0, {len(order)}], got {k}")
    taken: dict[str, int] = {}
    picked: list[int] = []
    for i in order:
        if len(picked) == k:
            return picked
        if taken.get(groups[i], 0) < cap:
            taken[groups[i]] = taken.get(groups[i], 0) + 1
            picked.append(i)
    chosen = set(picked)
    picked += [i for i in order if i not in chosen][:k - len(picked)]
    return picked


# ------------------------------------------------------------------ regions (pixel budgets)

def round_robin_scores(region_scores: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Scores that put every frame's best region before any frame's second best (then the
    seconds, and so on; within a round, by score): a per-frame spread for region selection.

    Why: ranked by score alone, map-based region arms spend a pixel budget in few frames and often
    one class per cycle (bench/results/al.md: some cycles 80-98 % road pixels), while random boxes
    cover ~140 frames a cycle. Spreading over frames is the region analogue of the sequence cap;
    region methods that select within each image (Mackowiak et al., CEREALS, BMVC 2018; Kasarla
    et al., "Region-based active learning for efficient labeling in semantic segmentation", WACV
    2019) spread the same way.

    Args:
        region_scores: [R] scores (higher first).
        frames: [R] the frame each region belongs to (any hashable ids).

    Returns:
        float64 [R]: -(rank of the region within its frame) + its score scaled into [0, 1).

    Raises:
        InvalidInput: lengths differ.
    """
    scores = np.asarray(region_scores, dtype=np.float64)
    frames = np.asarray(frames)
    if scores.shape != frames.shape:
        raise InvalidInput(f"{scores.size} scores but {frames.size} frame ids")
    rank = np.zeros(scores.size)
    seen: dict = {}
    for i in top_k(scores, scores.size):  # best first: each frame's regions get ranks 0, 1, 2, ...
        rank[i] = seen.get(frames[i].item(), 0)
        seen[frames[i].item()] = rank[i] + 1
    span = scores.max() - scores.min() if scores.size else 0.0
    unit = (scores - scores.min()) / span * 0.999 if span > 0 else np.zeros_like(scores)  # [0, 1)
    return unit - rank


def fill_pixel_budget(region_scores: np.ndarray, region_areas: np.ndarray, budget_px: int) -> list[int]:
    """Regions to label under a pixel budget: best score first, each added while the spent pixels
    stay within the budget (a region that does not fit is skipped, smaller later ones may fit).

    The greedy region acquisition of Mackowiak et al., "CEREALS - Cost-Effective REgion-based
    Active Learning for Semantic Segmentation", BMVC 2018, with cost = pixels.

    Args:
        region_scores: [R] scores (higher first).
        region_areas: [R] pixels per region (> 0).
        budget_px: pixels that may be spent (>= 0).

    Returns:
        indices of the chosen regions, in order of choice.

    Raises:
        InvalidInput: lengths differ, a non-positive area or a negative budget.
    """
    region_scores = np.asarray(region_scores, dtype=np.float64)
    areas = np.asarray(region_areas, dtype=np.int64)
    if areas.shape != region_scores.shape:
        raise InvalidInput(f"{region_scores.size} scores but {areas.size} areas")
    if (areas <= 0).any():
        raise InvalidInput("region areas must be positive")
    if budget_px < 0:
        raise InvalidInput(f"budget_px must be >= 0, got {budget_px}")
    picked, spent = [], 0
    for i in top_k(region_scores, region_scores.size):
        if spent + areas[i] <= budget_px:
            picked.append(i)
            spent += int(areas[i])
    return picked


def random_boxes(rng: np.random.Generator, n_frames: int, shape: tuple[int, int], areas: np.ndarray,
                 aspects: np.ndarray, budget_px: int, excluded: dict[int, np.ndarray] | None = None,
                 max_tries: int = 10_000) -> list[tuple[int, np.ndarray]]:
    """Random regions whose sizes follow a given distribution: boxes with (area, aspect) drawn from
    the samples, placed uniformly in uniformly drawn frames, until the pixel budget is spent.

    The random baseline of region-based AL (Mackowiak et al., BMVC 2018; Kasarla et al., "Region-based
    Active Learning for Efficient Labeling in Semantic Segmentation", WACV 2019): same region sizes
    as the informed strategy, chosen without looking.

    Args:
        rng: the random stream.
        n_frames: frames to draw from (indices 0..n_frames-1).
        shape: (H, W) of a frame.
        areas: [S] sample of region areas (pixels, > 0).
        aspects: [S] matching sample of width / height ratios (> 0).
        budget_px: new pixels to spend.
        excluded: frame index -> bool mask of pixels that are already labeled (not counted again).
        max_tries: safety bound on draws.

    Returns:
        list of (frame index, bool mask [H, W]) whose new pixels total at most budget_px.

    Raises:
        InvalidInput: empty or non-positive samples, or mismatched sample lengths.
    """
    areas = np.asarray(areas, dtype=np.float64)
    aspects = np.asarray(aspects, dtype=np.float64)
    if areas.size == 0 or areas.shape != aspects.shape or (areas <= 0).any() or (aspects <= 0).any():
        raise InvalidInput("random_boxes needs matching, positive area and aspect samples")
    h, w = shape
    excluded = excluded or {}
    out: list[tuple[int, np.ndarray]] = []
    spent = 0
    taken: dict[int, np.ndarray] = {}
    for _ in range(max_tries):
        if budget_px - spent < max(1.0, areas.min() * 0.25):
            break
        s = int(rng.integers(areas.size))
        bh = int(np.clip(round(math.sqrt(areas[s] / aspects[s])), 1, h))
        bw = int(np.clip(round(areas[s] / bh), 1, w))
        f = int(rng.integers(n_frames))
        y, x = int(rng.integers(h - bh + 1)), int(rng.integers(w - bw + 1))
        mask = np.zeros((h, w), bool)
        mask[y:y + bh, x:x + bw] = True
        prior = taken.get(f, excluded.get(f))
        new = mask & ~prior if prior is not None else mask
        n_new = int(new.sum())
        if n_new == 0 or spent + n_new > budget_px:
            continue
        out.append((f, new))
        taken[f] = new if prior is None else (prior | new)
        spent += n_new
    return out

# ------------------------------------------------------------------ the in-process loop's frame scores

LOOP_STRATEGIES = ("random", "entropy", "pae", "eem", "eem-topq")


def strategy_score(strategy: str, frame: FrameEEM, q: float = 0.05) -> float:
    """The acquisition score a strategy ranks by (higher = query first)."""
    if strategy == "entropy":
        return float(frame.ebu.mean())
    if strategy == "pae":
        return float(frame.pae.mean())
    if strategy == "eem":
        return float(frame.eem.mean())
    if strategy == "eem-topq":
        return frame_score(frame.eem, mode="topq", q=q)
    raise InvalidInput(f"unknown strategy {strategy!r}; choose from {', '.join(LOOP_STRATEGIES)}")
