"""The greedy pass of a composed selection: one pick after another, each maximising

    gain(i) = f_score(i) ** score * f_div(i) ** diversity * f_bal(i) ** balance

over the frames still allowed (SelectionSpec's constraints), with every factor in (0, 1]:
    f_score  the frame's score rank among the candidates, (rank + 1) / n: scores of any scale
             (EEM, entropy, another model's) weigh alike
    f_div    distance to the nearest labelled or already picked embedding, over the largest such
             distance left (1 for every frame while nothing is labelled or picked)
    f_bal    the frame's predicted class histogram weighted by the rarity of each class among the
             labelled and picked frames (weight 1 / (share + 1/(10 C)): a class never seen weighs 10 C,
             one that fills every pixel ~1), over the largest such value left
The one selection path of the project: the coordinator's ranking, the fleet's global step and the
label-efficiency benchmark all call `select` (docs/design.md, "EEM options and selection").

Each pick records why it was made (Pick.reasons): its score, its distance to the nearest labelled
or picked frame, its class gain, its log.

References:
    Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
    ICLR 2018 (k-center greedy); Lightly's selection (strategies composed multiplicatively, with
    strengths as exponents, picked greedily).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from segxal.errors import InvalidInput
from segxal.selection.neighbors import nearest_distances
from segxal.selection.spec import SelectionSpec

_TINY = 1e-12  # keeps log() finite for a factor of 0 (that frame then loses to any positive one)


@dataclass
class PoolFeatures:
    """What the selection knows of each candidate frame (row i = frame ids[i])."""
    ids: Sequence[str]
    scores: np.ndarray  # float64 [N]: higher = more worth labelling
    embeddings: np.ndarray | None = None  # float32 [N, D], unit rows (the served graph's `embedding`)
    class_hist: np.ndarray | None = None  # float [N, C]: share of the frame's predicted pixels per class
    log_ids: Sequence[str] | None = None  # drive log of each frame (the log cap)


@dataclass(frozen=True)
class Pick:
    """One selected frame and why."""
    index: int  # row in PoolFeatures
    id: str
    order: int  # 1 = first pick
    gain: float  # the product of factors it won with, in (0, 1]
    score: float
    distance: float | None  # to the nearest labelled or earlier-picked frame; None: no embeddings or none yet
    class_gain: float | None  # f_bal before normalisation; None: no class histograms
    log_id: str | None

    def reasons(self) -> dict:
        """JSON-safe, for the task a labeler leases and the Label Studio task."""
        return {"order": self.order, "gain": round(self.gain, 6), "score": self.score,
                "distance": None if self.distance is None else round(self.distance, 6),
                "class_gain": None if self.class_gain is None else round(self.class_gain, 6),
                "log": self.log_id}


def _check(pool: PoolFeatures, spec: SelectionSpec, labelled_embeddings, labelled_class_hist) -> None:
    n = len(pool.ids)
    scores = np.asarray(pool.scores)
    if scores.shape != (n,):
        raise InvalidInput(f"selection: {n} ids but scores of shape {scores.shape}")
    if np.isnan(scores).any():
        raise InvalidInput("selection: scores hold NaN")
    if spec.needs_embeddings:
        if pool.embeddings is None:
            raise InvalidInput("selection: diversity or min_distance needs frame embeddings; the served "
                               "segmentation model has no `embedding` output (export it with one)")
        if pool.embeddings.shape[0] != n or pool.embeddings.ndim != 2:
            raise InvalidInput(f"selection: {n} ids but embeddings of shape {pool.embeddings.shape}")
        if labelled_embeddings is not None and len(labelled_embeddings) and (
                labelled_embeddings.ndim != 2 or labelled_embeddings.shape[1] != pool.embeddings.shape[1]):
            raise InvalidInput(f"selection: labelled embeddings {labelled_embeddings.shape} do not match the "
                               f"pool's {pool.embeddings.shape} (another model's embedding?)")
    if spec.needs_class_histograms:
        if pool.class_hist is None:
            raise InvalidInput("selection: balance needs predicted class histograms")
        if pool.class_hist.shape[0] != n or pool.class_hist.ndim != 2:
            raise InvalidInput(f"selection: {n} ids but class histograms of shape {pool.class_hist.shape}")
        if labelled_class_hist is not None and np.asarray(labelled_class_hist).shape != (pool.class_hist.shape[1],):
            raise InvalidInput(f"selection: labelled class mass must be [C={pool.class_hist.shape[1]}], got "
                               f"{np.asarray(labelled_class_hist).shape}")
    if spec.log_cap and pool.log_ids is None:
        raise InvalidInput("selection: log_cap needs each frame's drive log")


def select(pool: PoolFeatures, k: int, spec: SelectionSpec | None = None, *,
           labelled_embeddings: np.ndarray | None = None,
           labelled_class_hist: np.ndarray | None = None) -> list[Pick]:
    """Pick up to k frames of the pool, greedily (module docstring).

    Args:
        pool: the candidates.
        k: how many to pick (fewer when the constraints leave fewer: the caller sees the shortfall).
        spec: the composed selection (SelectionSpec() = by score alone).
        labelled_embeddings: float32 [M, D] of the frames already labelled (diversity counts
            distance to them too); None or empty: none.
        labelled_class_hist: float [C], summed class histograms of the labelled frames.

    Returns:
        the picks in pick order.

    Raises:
        InvalidInput: k < 0, an invalid spec, or features the spec needs that are missing or of
            the wrong shape.
    """
    spec = (spec or SelectionSpec()).validate()
    if k < 0:
        raise InvalidInput(f"selection: k must be >= 0, got {k}")
    _check(pool, spec, labelled_embeddings, labelled_class_hist)
    scores = np.asarray(pool.scores, dtype=np.float64)
    cand = np.flatnonzero(scores >= spec.min_score) if spec.min_score > -math.inf else np.arange(len(scores))
    # candidates by score, best first; ties by id, so a run is reproducible whatever the input order
    if spec.shortlist and math.ceil(spec.shortlist * k) < len(cand):
        # the top m by score first, in O(N): at fleet scale only they meet the embeddings
        m = math.ceil(spec.shortlist * k)
        cand = cand[np.argpartition(-scores[cand], m - 1)[:m]]
    ids = np.asarray(pool.ids, dtype=object)
    cand = cand[np.lexsort((ids[cand].astype(str), -scores[cand]))]
    n = len(cand)
    if n == 0 or k == 0:
        return []
    log_fs = np.log((n - np.arange(n)) / n)  # [n] score rank, best = log 1

    emb = dist = None
    if pool.embeddings is not None and spec.needs_embeddings:
        emb = np.ascontiguousarray(pool.embeddings[cand], dtype=np.float32)  # [n, D]
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # unit rows, whatever came
        if labelled_embeddings is not None and len(labelled_embeddings):
            dist = nearest_distances(emb, labelled_embeddings)  # [n]
        else:
            dist = np.full(n, np.inf, np.float32)
    hist = mass = None
    if pool.class_hist is not None and spec.needs_class_histograms:
        hist = np.asarray(pool.class_hist[cand], dtype=np.float64)  # [n, C]
        mass = (np.zeros(hist.shape[1]) if labelled_class_hist is None
                else np.asarray(labelled_class_hist, dtype=np.float64).copy())  # [C]
    logs = None
    if spec.log_cap:
        _, logs = np.unique(np.asarray(pool.log_ids, dtype=object)[cand].astype(str), return_inverse=True)
        taken = np.zeros(logs.max() + 1, np.int64)

    alive = np.ones(n, bool)
    if dist is not None and spec.min_distance > 0:
        alive &= dist >= spec.min_distance
    picks: list[Pick] = []
    base = spec.score * log_fs  # [n]
    # log f_div and log f_bal up to their normalising maxima: a constant shift per step, so the
    # argmax is the same and only the changed distances need a new log
    log_dist = None
    if spec.diversity and dist is not None and np.isfinite(dist).all():
        log_dist = np.log(np.maximum(dist, _TINY))  # [n]
    # one BLAS thread: each step is a memory-bound matrix-vector product, and OpenBLAS's threads
    # spin-wait for each other, 10x slower than one thread on a busy 2-core machine (measured)
    with threadpool_limits(1, user_api="blas"):
        while len(picks) < k and alive.any():
            total = base.copy()
            if log_dist is not None:
                total += spec.diversity * log_dist
            gain_c = log_gain = None
            if spec.balance and hist is not None:
                c = hist.shape[1]
                share = mass / mass.sum() if mass.sum() > 0 else np.zeros(c)
                gain_c = hist @ (1.0 / (share + 0.1 / c))  # [n]
                log_gain = np.log(np.maximum(gain_c, _TINY))
                total += spec.balance * log_gain
            total[~alive] = -np.inf
            i = int(np.argmax(total))
            if not np.isfinite(total[i]):
                break
            gain = base[i]  # the pick's product of normalised factors, for its reasons
            if log_dist is not None:
                gain += spec.diversity * (log_dist[i] - math.log(max(float(dist[alive].max()), _TINY)))
            if log_gain is not None:
                gain += spec.balance * (log_gain[i] - float(log_gain[alive].max()))
            d_i = None if dist is None or not np.isfinite(dist[i]) else float(dist[i])
            row = int(cand[i])
            picks.append(Pick(index=row, id=str(pool.ids[row]), order=len(picks) + 1, gain=float(math.exp(gain)),
                              score=float(scores[row]), distance=d_i,
                              class_gain=None if gain_c is None else float(gain_c[i]),
                              log_id=None if pool.log_ids is None else str(pool.log_ids[row])))
            alive[i] = False
            if emb is not None:
                # unit rows: |a - b|^2 = 2 - 2 a.b; float error may dip below 0
                d_new = np.sqrt(np.maximum(2.0 - 2.0 * (emb @ emb[i]), 0.0))  # [n]
                closer = d_new < dist
                dist[closer] = d_new[closer]
                if spec.diversity:
                    if log_dist is None:  # the first pick with nothing labelled: every distance is new
                        log_dist = np.log(np.maximum(dist, _TINY))
                    else:
                        log_dist[closer] = np.log(np.maximum(d_new[closer], _TINY))
                if spec.min_distance > 0:
                    alive &= dist >= spec.min_distance
            if mass is not None:
                mass += hist[i]
            if logs is not None:
                taken[logs[i]] += 1
                if taken[logs[i]] >= spec.log_cap:
                    alive &= logs != logs[i]
    return picks
