"""Ranking: the fan-out core (bounded concurrency, retries with backoff, top-K heap, model versions)
with small in-test scorers, then RankCycle through the real coordinator against the real EEM
scoring service (services.eem) over the real inference server with tiny exported models, on SQLite
and PostgreSQL: scores and tasks agree with what the EEM client says directly, versions never mix,
a down EEM service ends in reported, retriable failures."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tests.coordinator_support import BACKENDS, coordinator_config, database_url, running_coordinator
from tests.inference_support import H, W, export_models, make_repository, running_server
from segxal import imageio
from segxal.errors import InvalidInput, NotReady
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.common.server import ServerConfig
from services.coordinator.client import image_folder_source
from services.coordinator.domain import Candidate, FrameScore
from services.coordinator.ranking import RankingConfig, TopK, Ranked, rank_frames
from services.eem.api import ScoreOptions as EemScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig

VERSION = "segmentation:1"
FAST = RankingConfig(concurrency=3, chunk_size=2, max_attempts=3, backoff_initial_s=0.05,
                     backoff_multiplier=2.0, backoff_max_s=0.2)


def _score_of(uri: str) -> float:
    return int(hashlib.sha256(uri.encode()).hexdigest()[:8], 16) / 2 ** 32


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(f"f{i:04d}", f"/frames/{i:04d}.png") for i in range(n)]


class HashScorer:
    """Scores a URI by its hash; fails chosen URIs; counts calls and concurrency (thread-safe)."""

    def __init__(self, version=VERSION, fail_first_calls: dict[str, int] | None = None,
                 always: dict[str, Exception] | None = None, delay_s: float = 0.0):
        self.version = version
        self.fail_first_calls = dict(fail_first_calls or {})
        self.always = always or {}
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.calls_per_uri: dict[str, list[float]] = {}

    def score_many(self, uris, options, deadline_s):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            for u in uris:
                self.calls_per_uri.setdefault(u, []).append(time.monotonic())
        try:
            time.sleep(self.delay_s)
            for u in uris:
                with self.lock:
                    left = self.fail_first_calls.get(u, 0)
                    if left:
                        self.fail_first_calls[u] = left - 1
                if left:
                    yield u, NotReady(f"{u}: scorer busy")
                elif u in self.always:
                    yield u, self.always[u]
                else:
                    yield u, FrameScore(u, _score_of(u), self.version, height=4, width=8)
        finally:
            with self.lock:
                self.in_flight -= 1


# ---------------------------------------------------------------- the ranking core

def test_top_k_heap_keeps_the_k_best_in_order():
    rng = np.random.default_rng(0)
    scores = rng.random(1000)
    top = TopK(10)
    for i, s in enumerate(scores):
        top.offer(Ranked(float(s), f"f{i:04d}", None, None))
        assert len(top._heap) <= 10  # memory O(k)
    assert [r.score for r in top.best_first()] == sorted(scores, reverse=True)[:10]


def test_rank_frames_scores_each_frame_once_with_bounded_concurrency():
    scorer = HashScorer(delay_s=0.01)
    cands = _candidates(40)
    recorded = []
    out = rank_frames(cands, scorer, 5, VERSION, FAST, EemScoreOptions(), on_scored=recorded.extend)
    want = sorted(cands, key=lambda c: _score_of(c.uri), reverse=True)[:5]
    assert [r.frame_id for r in out.top] == [c.frame_id for c in want]
    assert out.scored == 40 and out.failed == 0 and len(recorded) == 40
    assert all(len(t) == 1 for t in scorer.calls_per_uri.values())
    assert 1 < scorer.max_in_flight <= FAST.concurrency


def test_transient_failures_retry_with_exponential_backoff_and_permanent_ones_fail_at_once():
    cands = _candidates(6)
    flaky, broken, dead = cands[0].uri, cands[1].uri, cands[2].uri
    scorer = HashScorer(fail_first_calls={flaky: 2, dead: 99},
                        always={broken: InvalidInput(f"{broken}: not a readable image")})
    failures = []
    out = rank_frames(cands, scorer, 10, VERSION, FAST, EemScoreOptions(), on_failed=failures.extend)
    failed = {f.uri: f for f in failures}
    assert out.failed == 2
    assert set(failed) == {broken, dead}
    assert failed[broken].attempts == 1 and "not a readable image" in failed[broken].error
    assert failed[dead].attempts == FAST.max_attempts and "scorer busy" in failed[dead].error
    assert flaky in {r.candidate.uri for r in out.top} and out.scored == 4
    t = scorer.calls_per_uri[flaky]
    assert len(t) == 3
    # delays are backoff_initial * multiplier ** (attempt - 1), jittered +-50 %
    assert t[1] - t[0] >= 0.5 * FAST.backoff_initial_s
    assert t[2] - t[1] >= 0.5 * FAST.backoff_initial_s * FAST.backoff_multiplier


class BreaksMidStream(HashScorer):
    """Answers the first frame of a call, then the whole call fails (a stream cut mid-way)."""

    def score_many(self, uris, options, deadline_s):
        for i, item in enumerate(super().score_many(uris, options, deadline_s)):
            if i == 1 and len(self.calls_per_uri[uris[1]]) == 1:
                raise NotReady("stream reset")
            yield item


def test_a_call_that_breaks_mid_stream_keeps_the_results_that_arrived():
    scorer = BreaksMidStream()
    out = rank_frames(_candidates(6), scorer, 6, VERSION, FAST, EemScoreOptions())
    assert out.scored == 6 and out.failed == 0
    firsts = [u for u, t in scorer.calls_per_uri.items() if len(t) == 1]
    assert len(firsts) == 3  # the first frame of each 2-frame call was not scored again


def test_scores_of_another_model_version_are_kept_but_never_ranked():
    cached = [Candidate("c0", "/c0.png", cached=FrameScore("/c0.png", 0.99, VERSION)),
              Candidate("c1", "/c1.png", cached=FrameScore("/c1.png", 0.98, "segmentation:0"))]
    scorer = HashScorer(version="segmentation:2")
    recorded, failures = [], []
    out = rank_frames(cached + _candidates(3), scorer, 3, VERSION, FAST, EemScoreOptions(),
                      on_scored=recorded.extend, on_failed=failures.extend)
    assert [r.frame_id for r in out.top] == ["c0"] and out.reused == 1  # c0's own version only
    assert len(recorded) == 4 and {s.segmentation_version for _, s in recorded} == {"segmentation:2"}
    assert len(failures) == 4 and all("this cycle ranks with segmentation:1" in f.error for f in failures)
    assert "/c0.png" not in scorer.calls_per_uri


# ---------------------------------------------------------------- through the EEM service

def _smooth_frame(rng) -> np.ndarray:
    small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))  # [H, W, 3]


@pytest.fixture(scope="module")
def eem_stack(tmp_path_factory):
    """12 frames on disk and a corrupt 13th, the inference server with tiny models, the EEM service."""
    base = tmp_path_factory.mktemp("eem")
    frames = base / "frames"
    frames.mkdir()
    rng = np.random.default_rng(11)
    for i in range(12):
        imageio.write_png(frames / f"frame_{i:02d}.png", _smooth_frame(rng))
    corrupt = frames / "frame_99.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    exports = export_models(base / "export", seeds=(0,))
    repo = make_repository(base / "repo", exports)
    with running_server(repo, grace_s=1.0) as inference:
        eem = _start_eem(inference.target, frames, port=0)
        with EemClient(eem.target, timeout_s=30) as client:
            client.wait_until_serving(30)
            yield SimpleNamespace(frames=frames, corrupt=corrupt, inference=inference, eem=eem,
                                  eem_client=client)
        eem.stop(1.0)


def _start_eem(inference_target: str, frames, port: int) -> EemServer:
    server = EemServer(EemServiceConfig(
        seg_target=inference_target, depth_target=inference_target, storage_roots=[str(frames)],
        server=ServerConfig(address=f"127.0.0.1:{port}", grace_s=1.0), health_poll_s=0.1,
        pipeline=PipelineConfig(max_concurrency=2)))
    server.start()
    return server


@pytest.fixture(params=BACKENDS)
def coord_eem(request, tmp_path, eem_stack):
    with database_url(request.param, tmp_path) as url:
        cfg = coordinator_config(url, tmp_path / "storage", eem_target=eem_stack.eem.target, ranking=FAST)
        with running_coordinator(cfg) as (server, client):
            pool = client.create_pool("eem-pool")
            client.ingest(pool.pool_id, [image_folder_source(str(eem_stack.frames))])
            yield SimpleNamespace(server=server, client=client, pool=pool, stack=eem_stack, tmp=tmp_path)


def test_rank_cycle_ranks_by_the_eem_services_scores(coord_eem):
    c, stack = coord_eem.client, coord_eem.stack
    c.register_model_version("segmentation", "repo/segmentation/1")
    cycle = c.start_cycle(coord_eem.pool.pool_id, 4)
    ranked = c.rank_cycle(cycle.cycle_id)
    # the reference: the EEM client asked directly, frame by frame
    good = sorted(p for p in stack.frames.glob("*.png") if p != stack.corrupt)
    direct = {str(p): stack.eem_client.score(str(p), EemScoreOptions(regions=True, labels=True)) for p in good}
    want = sorted(direct, key=lambda u: direct[u].score, reverse=True)[:4]
    assert [t.frame_uri for t in ranked.tasks] == want
    assert [t.rank for t in ranked.tasks] == [1, 2, 3, 4]
    for t in ranked.tasks:
        ref = direct[t.frame_uri]
        assert t.score == pytest.approx(ref.score, abs=1e-9)
        assert (t.model.model_name, t.model.version) == ("segmentation", 1)
        assert len(t.regions) == len(ref.regions)
        for got, exp in zip(t.regions, ref.regions):
            assert (got.bbox.x, got.bbox.y, got.bbox.width, got.bbox.height) == exp.bbox
            assert got.area == exp.area and got.dominant_class == exp.class_name
            assert list(got.rle.uncompressed_counts) == exp.rle["counts"]
        np.testing.assert_array_equal(imageio.read_label(t.prediction_uri), ref.labels())
        assert (t.height, t.width) == (H, W)
    assert ranked.frames_scored == 12 and ranked.frames_reused == 0
    (failed,) = ranked.failed
    assert failed.uri == str(stack.corrupt) and failed.attempts == 1 and "INVALID_ARGUMENT" in failed.error

    # ranking again reuses every stored score of this version; the corrupt frame is tried again
    again = c.rank_cycle(cycle.cycle_id)
    assert (again.frames_scored, again.frames_reused) == (0, 12)
    assert [t.frame_uri for t in again.tasks] == want and again.failed[0].attempts == 2
    assert all(t.prediction_uri for t in again.tasks)  # fetched again for the winners only

    # DICE against the stored prediction: agreeing region-level work retires the frame
    tasks = c.lease(coord_eem.pool.pool_id, max_tasks=2)
    pred = imageio.read_label(tasks[0].prediction_uri)
    region_ids = [r.region_id for r in tasks[0].regions][:1]
    r0 = c.submit(tasks[0], pred, region_ids=region_ids)
    assert r0.annotation.dice == 1.0 and r0.annotation.frame_retired
    assert r0.annotation.regions_count == len(region_ids) and r0.budget.spent_regions == len(region_ids)
    wrong = imageio.read_label(tasks[1].prediction_uri).copy()
    wrong[: H // 2] = (wrong[: H // 2] + 1) % 19
    r1 = c.submit(tasks[1], wrong)
    assert r1.annotation.dice < 0.95 and not r1.annotation.frame_retired
    report = c.cycle_report(cycle.cycle_id)
    assert report.annotations_with_dice == 2 and report.frames_retired == 1 and report.failed_frames == 1


def test_a_cycles_eem_options_reach_the_eem_service_and_are_stored_with_it(coord_eem, eem_stack):
    """StartCycle's EEM options (the loop's alpha/beta and strategy) rank that cycle exactly as the
    EEM service scores with those options, and come back with the cycle."""
    from segxal.eem.options import EEMOptions
    opts = EEMOptions(alpha=0.8, beta=0.2, score_mode="topq", q=0.1, threshold_mode="fixed", threshold=0.3,
                      min_region_area=4)
    c = coord_eem.client
    c.register_model_version("segmentation", "repo/segmentation/1")
    cycle = c.start_cycle(coord_eem.pool.pool_id, 3, eem=opts)
    assert (cycle.eem_options.alpha, cycle.eem_options.top_q, cycle.eem_options.min_region_area) == (0.8, 0.1, 4)
    ranked = c.rank_cycle(cycle.cycle_id)
    good = sorted(p for p in eem_stack.frames.glob("*.png") if p != eem_stack.corrupt)
    direct = {str(p): eem_stack.eem_client.score(str(p), EemScoreOptions(eem=opts, regions=True)) for p in good}
    default = {u: eem_stack.eem_client.score(u, EemScoreOptions(regions=True)).score for u in direct}
    assert [t.frame_uri for t in ranked.tasks] == sorted(direct, key=lambda u: direct[u].score, reverse=True)[:3]
    for t in ranked.tasks:
        assert t.score == pytest.approx(direct[t.frame_uri].score, abs=1e-9)
        assert t.score != pytest.approx(default[t.frame_uri], abs=1e-6)  # not the default options
        assert [r.area for r in t.regions] == [r.area for r in direct[t.frame_uri].regions]


def test_scores_of_one_model_version_never_rank_a_cycle_of_another(coord_eem):
    c = coord_eem.client
    c.register_model_version("segmentation", "repo/segmentation/1")
    first = c.start_cycle(coord_eem.pool.pool_id, 3)
    c.rank_cycle(first.cycle_id)
    c.register_model_version("segmentation", "repo/segmentation/2")  # the EEM still serves version 1
    second = c.start_cycle(coord_eem.pool.pool_id, 3, cancel_unfinished=True)
    assert second.model.version == 2
    ranked = c.rank_cycle(second.cycle_id)
    assert ranked.tasks == [] and ranked.frames_scored == 0 and ranked.frames_reused == 0
    assert len(ranked.failed) == 13
    assert sum("this cycle ranks with segmentation:2" in f.error for f in ranked.failed) == 12
    keys = coord_eem.server.store.db.run(
        lambda tx: {r["model_key"] for r in tx.all("SELECT DISTINCT model_key FROM scores")}, write=False)
    assert keys == {"segmentation:1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eem_down_ranking_retries_then_reports_every_frame_and_succeeds_later(backend, tmp_path, eem_stack):
    port = _free_port()
    with database_url(backend, tmp_path) as url:
        cfg = coordinator_config(url, tmp_path / "storage", eem_target=f"127.0.0.1:{port}",
                                 ranking=RankingConfig(concurrency=2, chunk_size=4, max_attempts=3,
                                                       backoff_initial_s=0.05, deadline_s=5))
        with running_coordinator(cfg) as (_, c):
            pool = c.create_pool("down")
            c.ingest(pool.pool_id, [image_folder_source(str(eem_stack.frames))])
            c.register_model_version("segmentation", "repo/segmentation/1")
            cycle = c.start_cycle(pool.pool_id, 5)
            down = c.rank_cycle(cycle.cycle_id)  # nothing listens on the EEM port
            assert down.tasks == [] and len(down.failed) == 13
            assert all(f.attempts == 3 and "UNAVAILABLE" in f.error for f in down.failed)
            report = c.cycle_report(cycle.cycle_id)
            assert report.failed_frames == 13 and report.cycle.state == pb.CYCLE_STATE_STARTED
            assert not report.cycle_complete and "scoring failed for 13 frames" in report.stop_detail
            assert c.get_pool(pool.pool_id).queryable_frame_count == 13  # nothing lost
            eem = _start_eem(eem_stack.inference.target, eem_stack.frames, port)
            try:
                with EemClient(eem.target) as probe:
                    probe.wait_until_serving(30)
                up = c.rank_cycle(cycle.cycle_id)
            finally:
                eem.stop(1.0)
            assert len(up.tasks) == 5 and up.frames_scored == 12
            assert [f.uri for f in up.failed] == [str(eem_stack.corrupt)]  # the others were cleared
            assert c.cycle_report(cycle.cycle_id).failed_frames == 1


def test_a_ranking_with_other_eem_options_scores_the_frames_again(coord_eem, eem_stack):
    """Regression: scores were keyed by (frame, model version) only, so a ranking with other EEM
    options reused the scores made with the old ones. Now they are keyed by the options too."""
    from segxal.eem.options import EEMOptions
    c, pool = coord_eem.client, coord_eem.pool.pool_id
    c.register_model_version("segmentation", "repo/segmentation/1")
    first = c.rank_cycle(c.start_cycle(pool, 3).cycle_id)
    assert (first.frames_scored, first.frames_reused) == (12, 0)
    other = EEMOptions(alpha=0.2, beta=0.8, score_mode="topq", q=0.2)
    second = c.rank_cycle(c.start_cycle(pool, 3, eem=other, cancel_unfinished=True).cycle_id)
    assert (second.frames_scored, second.frames_reused) == (12, 0)  # nothing stale reused
    for t in second.tasks:
        want = eem_stack.eem_client.score(t.frame_uri, EemScoreOptions(eem=other)).score
        assert t.score == pytest.approx(want, abs=1e-9)
    # the first options' scores are still there for a cycle that ranks with them again
    third = c.rank_cycle(c.start_cycle(pool, 3, eem=EEMOptions(), cancel_unfinished=True).cycle_id)
    assert (third.frames_scored, third.frames_reused) == (0, 12)
    assert [t.frame_uri for t in third.tasks] == [t.frame_uri for t in first.tasks]


def test_bad_cycle_eem_options_are_refused_at_start_cycle(coord_eem):
    from segxal.eem.options import EEMOptions
    c = coord_eem.client
    c.register_model_version("segmentation", "repo/segmentation/1")
    for bad, needle in ((EEMOptions(alpha=0.7, beta=0.7), "alpha"),
                        (EEMOptions(threshold_mode="fixed", threshold=1.5), "threshold"),
                        (EEMOptions(min_region_area=-1), "min_region_area")):
        with pytest.raises(InvalidInput, match=needle):
            c.start_cycle(coord_eem.pool.pool_id, 3, eem=bad)


def test_a_pool_in_other_classes_than_the_model_is_not_ranked(coord_eem):
    """The served model predicts the 19 Cityscapes classes (the EEM result says so); a pool labelled
    in four classes is refused with FAILED_PRECONDITION naming both lists, and no task is made."""
    from segxal.errors import FailedPrecondition
    from segxal.labels import CLASS_NAMES
    c, stack = coord_eem.client, coord_eem.stack
    direct = stack.eem_client.score(str(sorted(stack.frames.glob("frame_0*.png"))[0]), EemScoreOptions())
    assert direct.class_names == tuple(CLASS_NAMES)
    pool = c.create_pool("four-classes", class_names=("flat", "vehicle", "human", "sky"))
    c.ingest(pool.pool_id, [image_folder_source(str(stack.frames))])
    c.register_model_version("segmentation", "repo/segmentation/1")
    cycle = c.start_cycle(pool.pool_id, 4)
    with pytest.raises(FailedPrecondition, match=r"4 classes \(flat, vehicle, human, sky\).*19 classes \(road"):
        c.rank_cycle(cycle.cycle_id)
    assert not c.lease(pool.pool_id, max_tasks=4)
    assert c.rank_cycle(c.start_cycle(coord_eem.pool.pool_id, 2).cycle_id).tasks  # the Cityscapes pool ranks
