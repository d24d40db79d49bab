"""Acquisition functions on pools whose right answer is known by construction (segxal.al.strategies)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segxal.al import strategies as st
from segxal.eem.ebu import prediction_statistics
from segxal.eem.fuse import frame_score
from segxal.errors import InvalidInput
from segxal.labels import NAME_TO_TRAIN_ID, NUM_CLASSES


def _planted_clusters(rng, n_clusters=5, per=20, dim=8, spread=0.05):
    centers = rng.normal(0, 10, size=(n_clusters, dim))
    x = np.concatenate([c + rng.normal(0, spread, size=(per, dim)) for c in centers])  # [n * per, D]
    return x, np.repeat(np.arange(n_clusters), per)


def test_core_set_spreads_over_planted_clusters():
    x, cluster = _planted_clusters(np.random.default_rng(0))
    picked = st.k_center_greedy(x, 5)
    assert sorted(cluster[picked].tolist()) == [0, 1, 2, 3, 4]


def test_core_set_avoids_clusters_already_labeled():
    x, cluster = _planted_clusters(np.random.default_rng(1))
    labeled = np.stack([x[cluster == c][0] for c in (0, 1, 2)])
    picked = st.k_center_greedy(x, 2, centers=labeled)
    assert sorted(cluster[picked].tolist()) == [3, 4]


def test_core_set_agrees_with_brute_force_k_center_on_small_pool():
    # greedy is a 2-approximation: its covering radius is at most twice the optimum
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 2))
    import itertools
    def radius(idx):
        return np.linalg.norm(x[:, None] - x[list(idx)][None], axis=2).min(1).max()
    best = min(radius(c) for c in itertools.combinations(range(9), 3))
    assert radius(st.k_center_greedy(x, 3)) <= 2 * best + 1e-12


def _softmax_samples(logits_per_sample):
    return torch.tensor(logits_per_sample, dtype=torch.float32).softmax(dim=1).numpy()


def test_bald_prefers_frames_where_dropout_samples_disagree():
    # 6 frames [T=4, C=3, 2, 2]: frames 1 and 4 have samples that each are confident in a
    # different class (epistemic); frames 0, 2, 3, 5 have flat but agreeing samples (aleatoric)
    # or confident agreeing samples. Entropy of the mean prefers the flat ones; BALD must not.
    t, c = 4, 3
    frames = []
    for f in range(6):
        if f in (1, 4):
            s = np.stack([np.roll(np.array([8.0, 0, 0]), k % c) for k in range(t)])  # disagree
        elif f in (0, 3):
            s = np.zeros((t, c))  # flat, agree
        else:
            s = np.tile([8.0, 0, 0], (t, 1))  # confident, agree
        frames.append(_softmax_samples(np.broadcast_to(s[:, :, None, None], (t, c, 2, 2)).copy()))
    bald = np.array([st.bald_map(p).mean() for p in frames])
    assert sorted(st.top_k(bald, 2)) == [1, 4]
    assert bald[[0, 2, 3, 5]].max() < 1e-6  # agreeing samples carry no mutual information
    # the torch path gives the same numbers
    assert np.allclose([float(st.bald_map(torch.from_numpy(p)).mean()) for p in frames], bald, atol=1e-5)


def test_bald_rejects_a_single_sample():
    with pytest.raises(InvalidInput, match="T >= 2"):
        st.bald_map(np.ones((1, 3, 2, 2)) / 3)


def test_entropy_and_least_confidence_pick_the_known_most_uncertain_frames():
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(0, 6, size=(10, NUM_CLASSES, 8, 8)), dtype=torch.float32)
    logits[[2, 7]] *= 0.02  # nearly flat: the most uncertain frames by construction
    _, ebu, pmax = prediction_statistics(logits, dim=1)  # [10, 8, 8]
    assert sorted(st.top_k(frame_score(ebu.numpy(), "mean"), 2)) == [2, 7]
    assert sorted(st.top_k(frame_score(st.least_confidence_map(pmax.numpy()), "mean"), 2)) == [2, 7]


def test_top_k_breaks_ties_by_index():
    assert st.top_k(np.array([1.0, 3.0, 3.0, 2.0]), 3) == [1, 2, 3]


def test_diversity_term_never_picks_two_near_duplicates_while_others_remain():
    # 8 drive logs x 3 near-duplicate frames; the top-scored 9 frames are the 3 logs' duplicates.
    rng = np.random.default_rng(4)
    logs = rng.normal(0, 5, size=(8, 16))
    feats = np.concatenate([logs[s] + rng.normal(0, 0.01, size=(3, 16)) for s in range(8)])  # [24, 16]
    log_of = np.repeat(np.arange(8), 3)
    scores = np.where(log_of < 3, 1.0, 0.5) + rng.uniform(0, 0.01, 24)
    for k in (2, 3, 5, 8):
        picked = st.diverse_top_k(scores, feats, k, candidates_factor=4)
        assert len(set(log_of[picked].tolist())) == k, (k, log_of[picked])
    # plain top-k does pick duplicates here (the reason for the term)
    assert len(set(log_of[st.top_k(scores, 3)].tolist())) < 3
    # and the best-scored frame is still first
    assert st.diverse_top_k(scores, feats, 3)[0] == int(np.argmax(scores))


def test_sequence_cap_spreads_then_lifts_the_cap():
    scores = np.array([9, 8, 7, 6, 5, 4], float)
    groups = ["a", "a", "a", "b", "b", "c"]
    assert st.sequence_capped_top_k(scores, groups, 3, cap=1) == [0, 3, 5]
    assert st.sequence_capped_top_k(scores, groups, 5, cap=1) == [0, 3, 5, 1, 2]


def test_class_balanced_weights_rare_predicted_classes_up():
    person, road = NAME_TO_TRAIN_ID["person"], NAME_TO_TRAIN_ID["road"]
    labels = np.full((2, 10, 10), road, np.uint8)
    labels[0, :2, :2] = person  # 4 of 200 pixels
    w = st.predicted_class_weights(labels)
    assert w[person] > 5 * w[road]
    out = st.class_balanced(np.ones((2, 10, 10), np.float32), labels, w)
    assert out[0, 0, 0] == pytest.approx(w[person]) and out[1, 5, 5] == pytest.approx(w[road])
    labels[1, 0, 0] = 255
    assert st.class_balanced(np.ones((2, 10, 10), np.float32), labels, w)[1, 0, 0] == 0.0


def test_fill_pixel_budget_takes_best_regions_that_fit():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    areas = np.array([50, 60, 30, 20])
    assert st.fill_pixel_budget(scores, areas, 100) == [0, 2, 3]
    assert st.fill_pixel_budget(scores, areas, 10) == []


def test_round_robin_takes_every_frames_best_region_before_any_second():
    scores = np.array([9.0, 8.0, 1.0, 5.0, 7.0])
    frames = np.array([0, 0, 1, 2, 2])
    rr = st.round_robin_scores(scores, frames)
    assert st.top_k(rr, 5) == [0, 4, 2, 1, 3]  # bests 9, 7, 1 by score; then seconds 8, 5
    # under a pixel budget: three frames get a region before frame 0 gets its second
    assert st.fill_pixel_budget(rr, np.full(5, 10), 30) == [0, 4, 2]
    assert st.fill_pixel_budget(scores, np.full(5, 10), 30) == [0, 1, 4]  # by score alone: frame 0 twice
    with pytest.raises(InvalidInput):
        st.round_robin_scores(scores, frames[:3])


def test_random_boxes_follow_the_size_sample_and_respect_budget_and_labeled_pixels():
    rng = np.random.default_rng(5)
    excluded = {0: np.ones((32, 64), bool)}  # frame 0 fully labeled already
    boxes = st.random_boxes(rng, 4, (32, 64), np.array([64.0]), np.array([1.0]), 1000, excluded=excluded)
    assert sum(int(m.sum()) for _, m in boxes) <= 1000
    assert all(f != 0 for f, _ in boxes)
    assert max(int(m.sum()) for _, m in boxes) <= 64
    assert sum(int(m.sum()) for _, m in boxes) >= 900  # the budget is (nearly) spent
