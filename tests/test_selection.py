"""The composed selection's greedy choice on pools whose right answer is known by construction."""
import math

import numpy as np
import pytest

from segxal.errors import InvalidInput
from segxal.selection import PoolFeatures, SelectionSpec, select
from segxal.selection.neighbors import nearest_distances


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clusters(n_clusters=4, per=10, d=16, seed=0):
    """Tight clusters around orthogonal centres; the cluster of frame i is i // per."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d, dtype=np.float32)[:n_clusters]
    emb = np.repeat(centres, per, axis=0) + 0.02 * rng.standard_normal((n_clusters * per, d)).astype(np.float32)
    return _unit(emb)


def test_plain_score_ranking_is_the_default():
    pool = PoolFeatures(ids=[f"f{i}" for i in range(6)], scores=np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8]))
    assert [p.id for p in select(pool, 3)] == ["f1", "f5", "f3"]


def test_diversity_picks_one_frame_per_planted_cluster():
    emb = _clusters()
    scores = np.linspace(1.0, 0.0, 40)  # the first cluster holds the ten best scores
    pool = PoolFeatures(ids=[str(i) for i in range(40)], scores=scores, embeddings=emb)
    by_score = select(pool, 4, SelectionSpec.parse("score=1"))
    assert {p.index // 10 for p in by_score} == {0}  # near-duplicates of one cluster
    diverse = select(pool, 4, SelectionSpec.parse("score=1,diversity=1"))
    assert sorted(p.index // 10 for p in diverse) == [0, 1, 2, 3]
    assert diverse[0].index == 0  # nothing labelled yet: the best score first
    assert all(p.distance > 1.0 for p in diverse[1:])  # orthogonal centres lie ~1.41 apart


def test_diversity_counts_what_is_already_labelled():
    emb = _clusters()
    pool = PoolFeatures(ids=[str(i) for i in range(40)], scores=np.linspace(1.0, 0.0, 40), embeddings=emb)
    labelled = emb[[0, 10]]  # clusters 0 and 1 are labelled already
    picks = select(pool, 2, SelectionSpec.parse("diversity=1"), labelled_embeddings=labelled)
    assert sorted(p.index // 10 for p in picks) == [2, 3]


def test_log_cap_spreads_near_duplicates_of_one_drive_log():
    # log A: 8 near-duplicate frames with the best scores; logs B..E: one frame each
    ids = [f"a{i}" for i in range(8)] + ["b", "c", "d", "e"]
    logs = ["A"] * 8 + ["B", "C", "D", "E"]
    scores = np.array([0.9] * 8 + [0.5, 0.4, 0.3, 0.2])
    pool = PoolFeatures(ids=ids, scores=scores, log_ids=logs)
    picks = select(pool, 5, SelectionSpec.parse("score=1,log_cap=1"))
    assert [p.log_id for p in picks] == ["A", "B", "C", "D", "E"]
    assert [p.log_id for p in select(pool, 5, SelectionSpec.parse("score=1,log_cap=2"))].count("A") == 2


def test_balance_finds_the_rare_class_in_one_log():
    c = 5
    hist = np.zeros((20, c))
    hist[:, 0] = 1.0  # road everywhere
    hist[17, :] = [0.6, 0, 0, 0, 0.4]  # one frame of one log shows the rare class 4
    scores = np.linspace(1.0, 0.5, 20)  # the rare frame has a low score
    labelled = np.array([50.0, 5.0, 5.0, 5.0, 0.0])  # class 4 never labelled
    pool = PoolFeatures(ids=[str(i) for i in range(20)], scores=scores, class_hist=hist)
    assert 17 not in [p.index for p in select(pool, 3, SelectionSpec.parse("score=1"))]
    picks = select(pool, 3, SelectionSpec.parse("score=1,balance=2"), labelled_class_hist=labelled)
    assert picks[0].index == 17 and picks[0].class_gain > picks[1].class_gain


def test_min_distance_skips_near_duplicates_and_reports_the_shortfall():
    emb = _clusters(n_clusters=2, per=5)
    pool = PoolFeatures(ids=[str(i) for i in range(10)], scores=np.linspace(1, 0, 10), embeddings=emb)
    picks = select(pool, 5, SelectionSpec.parse("score=1,min_distance=0.5"))
    assert [p.index for p in picks] == [0, 5]  # one per cluster; nothing else is 0.5 away: 2 of 5


def test_min_score_threshold_and_shortlist():
    pool = PoolFeatures(ids=list("abcdef"), scores=np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3]))
    assert [p.id for p in select(pool, 6, SelectionSpec.parse("min_score=0.5"))] == ["a", "c", "e"]
    emb = _unit(np.eye(6, dtype=np.float32))
    pool.embeddings = emb
    picks = select(pool, 2, SelectionSpec.parse("diversity=1,shortlist=1.5"))  # top 3 by score only
    assert {p.id for p in picks} <= {"a", "c", "e"}


def test_reasons_are_json_safe_and_name_every_factor():
    emb = _clusters(n_clusters=2, per=3)
    pool = PoolFeatures(ids=[str(i) for i in range(6)], scores=np.linspace(1, 0, 6), embeddings=emb,
                        class_hist=np.full((6, 3), 1 / 3), log_ids=["L"] * 6)
    picks = select(pool, 2, SelectionSpec.parse("score=1,diversity=1,balance=1"))
    r = picks[1].reasons()
    assert set(r) == {"order", "gain", "score", "distance", "class_gain", "log"}
    assert r["order"] == 2 and r["log"] == "L" and 0 < r["gain"] <= 1 and r["distance"] > 1.0
    assert picks[0].reasons()["distance"] is None  # nothing labelled or picked before it


def test_ties_break_by_id_whatever_the_input_order():
    ids = ["c", "a", "b"]
    pool = PoolFeatures(ids=ids, scores=np.array([0.5, 0.5, 0.5]))
    assert [p.id for p in select(pool, 3)] == ["a", "b", "c"]


@pytest.mark.parametrize("text, needle", [
    ("score=-1", "score must be"), ("score=0", "at least one"), ("speed=1", "unknown name"),
    ("score", "name=value"), ("log_cap=1.5", "integer"), ("min_distance=3", "min_distance"),
    ("score=1,score=2", "twice"), ("shortlist=0.5", "shortlist"), ("score=nan", "score must be"),
])
def test_bad_selection_text_is_named(text, needle):
    with pytest.raises(InvalidInput, match=needle):
        SelectionSpec.parse(text)


def test_missing_features_are_a_clear_error():
    pool = PoolFeatures(ids=["a"], scores=np.array([1.0]))
    with pytest.raises(InvalidInput, match="embedding"):
        select(pool, 1, SelectionSpec.parse("diversity=1"))
    with pytest.raises(InvalidInput, match="class histograms"):
        select(pool, 1, SelectionSpec.parse("balance=1"))
    with pytest.raises(InvalidInput, match="drive log"):
        select(pool, 1, SelectionSpec.parse("log_cap=1"))


def test_spec_round_trips_text_and_dict():
    spec = SelectionSpec.parse("score=1,diversity=0.5,log_cap=2,min_score=0.1")
    assert SelectionSpec.parse(spec.text()) == spec
    assert SelectionSpec.from_dict(spec.to_dict()) == spec
    assert SelectionSpec.from_dict(SelectionSpec().to_dict()).min_score == -math.inf
    assert SelectionSpec().text() == "score=1"


@pytest.mark.parametrize("exact", [True, False])
def test_nearest_distances_match_a_brute_force_search(exact):
    rng = np.random.default_rng(1)
    q, b = _unit(rng.standard_normal((300, 24))), _unit(rng.standard_normal((500, 24)))
    want = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)
    got = nearest_distances(q, b, exact=exact)
    if exact:
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:  # HNSW: approximate, never nearer than the truth
        assert (got >= want - 1e-5).all() and np.mean(np.abs(got - want) < 1e-5) > 0.9


def test_greedy_k_center_equals_a_brute_force_farthest_first():
    """Diversity alone is farthest-first traversal: each pick maximises the distance to everything
    labelled and picked so far (checked against an independent O(N k M) loop)."""
    rng = np.random.default_rng(2)
    emb = _unit(rng.standard_normal((120, 8)))
    labelled = _unit(rng.standard_normal((5, 8)))
    pool = PoolFeatures(ids=[f"{i:03d}" for i in range(120)], scores=np.zeros(120), embeddings=emb)
    got = [p.index for p in select(pool, 10, SelectionSpec.parse("score=0,diversity=1"),
                                   labelled_embeddings=labelled)]
    centres, want = list(labelled), []
    for _ in range(10):
        d = np.array([min(np.linalg.norm(e - c) for c in centres) for e in emb])
        d[want] = -1
        j = int(np.argmax(d))
        want.append(j)
        centres.append(emb[j])
    assert got == want
