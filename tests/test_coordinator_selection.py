"""A cycle's composed selection through the real coordinator (SQLite and PostgreSQL), the real EEM
service and inference server: the greedy choice on a pool whose right answer is known (near-duplicate
frames of one drive log holding the best scores), stored with the cycle, with each pick's reasons on
the leased tasks."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from segxal import imageio
from segxal.errors import FailedPrecondition, InvalidInput
from segxal.export import export_segmentation
from segxal.selection import SelectionSpec
from services.common.server import ServerConfig
from services.coordinator.client import image_folder_source
from services.coordinator.ranking import RankingConfig
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from tests.coordinator_support import BACKENDS, coordinator_config, database_url, running_coordinator
from tests.inference_support import TRACE, H, W, export_models, make_repository, running_server, tiny_unet

FAST = RankingConfig(concurrency=2, chunk_size=4, max_attempts=2, backoff_initial_s=0.05, deadline_s=30.0)
DUPLICATES = 6  # near-duplicates of the best-scoring frame, all in drive log "a"
OTHER_LOGS = ("b", "c", "d", "e")


def _frame(rng) -> np.ndarray:
    small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))  # [H, W, 3]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Candidates scored once; the best one copied (with +-2 of noise) six times into log a, four
    others one per log b..e; the inference server and the EEM service over them."""
    base = tmp_path_factory.mktemp("selection")
    root = base / "frames"
    (root / "candidates").mkdir(parents=True)
    rng = np.random.default_rng(5)
    cands = [_frame(rng) for _ in range(8)]
    for i, img in enumerate(cands):
        imageio.write_png(root / "candidates" / f"c{i}.png", img)
    # the embedding at the bottleneck: this random-weight net's head input barely tells frames apart
    exports = export_models(base / "export", seeds=(0,))
    exports["segmentation"] = [export_segmentation(tiny_unet(0), base / "export" / "seg-bottleneck" / "model.onnx",
                                                   dataclasses.replace(TRACE, embedding_layer="bottleneck"))]
    repo = make_repository(base / "repo", exports)
    with running_server(repo, grace_s=1.0) as inference:
        eem = EemServer(EemServiceConfig(
            seg_target=inference.target, depth_target=inference.target, storage_roots=[str(root)],
            server=ServerConfig(address="127.0.0.1:0", grace_s=1.0), health_poll_s=0.1,
            pipeline=PipelineConfig(max_concurrency=2)))
        eem.start()
        with EemClient(eem.target, timeout_s=30) as client:
            client.wait_until_serving(30)
            scores = [client.score(str(root / "candidates" / f"c{i}.png"), ScoreOptions()).score for i in range(8)]
            order = np.argsort(scores)[::-1]
            best = cands[order[0]]
            (root / "a").mkdir()
            for j in range(DUPLICATES):
                noisy = np.clip(best.astype(np.int16) + rng.integers(-2, 3, best.shape), 0, 255).astype(np.uint8)
                imageio.write_png(root / "a" / f"dup{j}.png", noisy)
            for log, i in zip(OTHER_LOGS, order[-len(OTHER_LOGS):]):  # the weakest scores
                (root / log).mkdir()
                imageio.write_png(root / log / "x.png", cands[i])
            yield SimpleNamespace(root=root, eem=eem, client=client)
        eem.stop(1.0)


@pytest.fixture(params=BACKENDS)
def coord(request, tmp_path, stack):
    with database_url(request.param, tmp_path) as url:
        cfg = coordinator_config(url, tmp_path / "storage", eem_target=stack.eem.target, ranking=FAST)
        with running_coordinator(cfg) as (server, client):
            pool = client.create_pool("selection-pool")
            client.ingest(pool.pool_id, [image_folder_source(str(stack.root / log)) for log in ("a",) + OTHER_LOGS])
            client.register_model_version("segmentation", "repo/segmentation/1")
            yield SimpleNamespace(client=client, pool=pool)


def _log(uri: str) -> str:
    return uri.rsplit("/", 2)[-2]


def test_plain_ranking_takes_the_near_duplicates_and_diversity_spreads_over_logs(coord):
    c = coord.client
    plain = c.rank_cycle(c.start_cycle(coord.pool.pool_id, 4).cycle_id)
    assert [_log(t.frame_uri) for t in plain.tasks] == ["a"] * 4  # the six copies hold the best scores

    spec = SelectionSpec.parse("score=1,diversity=1")
    cycle = c.start_cycle(coord.pool.pool_id, 4, selection_spec=spec, cancel_unfinished=True)
    assert (cycle.selection_spec.score, cycle.selection_spec.diversity) == (1.0, 1.0)
    ranked = c.rank_cycle(cycle.cycle_id)
    logs = [_log(t.frame_uri) for t in ranked.tasks]
    assert logs[0] == "a" and logs.count("a") == 1, logs  # the best first, then no second copy
    assert [t.rank for t in ranked.tasks] == [1, 2, 3, 4]


def test_leased_tasks_carry_each_picks_reasons(coord):
    c = coord.client
    cycle = c.start_cycle(coord.pool.pool_id, 3, selection_spec=SelectionSpec.parse("score=1,diversity=1,balance=1"))
    c.rank_cycle(cycle.cycle_id)
    tasks = c.lease(coord.pool.pool_id, max_tasks=3)
    assert [t.reasons.order for t in tasks] == [1, 2, 3]
    first, later = tasks[0].reasons, tasks[1:]
    assert not first.HasField("distance")  # nothing labelled or picked before the first pick
    assert all(t.reasons.HasField("distance") and t.reasons.distance > 0 for t in later)
    assert all(t.reasons.HasField("class_gain") and 0 < t.reasons.gain <= 1 for t in tasks)
    assert [t.reasons.log for t in tasks] == ["folder:" + t.frame_uri.rsplit("/", 1)[0] for t in tasks]
    assert all(t.reasons.score == pytest.approx(t.score) for t in tasks)
    line = c.pick_reasons(tasks[1])  # what the labeling clients log when they lease it
    assert line.startswith("pick 2, score ") and "to the nearest labelled or picked frame" in line
    assert "class gain" in line and "log folder:" in line


def test_log_cap_takes_one_frame_per_drive_log(coord):
    c = coord.client
    cycle = c.start_cycle(coord.pool.pool_id, 5, selection_spec=SelectionSpec.parse("score=1,log_cap=1"))
    ranked = c.rank_cycle(cycle.cycle_id)
    assert sorted(_log(t.frame_uri) for t in ranked.tasks) == ["a", "b", "c", "d", "e"]


def test_diversity_keeps_away_from_what_is_already_labelled(coord):
    """A copy labelled in cycle 1 makes the other five near-duplicates the least diverse frames of
    cycle 2: none of them is picked among 4 while 4 other logs remain."""
    c = coord.client
    first = c.start_cycle(coord.pool.pool_id, 1)
    (task,) = c.rank_cycle(first.cycle_id).tasks
    assert _log(task.frame_uri) == "a"
    (leased,) = c.lease(coord.pool.pool_id, max_tasks=1)
    c.submit(leased, np.zeros((H, W), np.uint8))
    cycle = c.start_cycle(coord.pool.pool_id, 4, selection_spec=SelectionSpec.parse("diversity=1"))
    ranked = c.rank_cycle(cycle.cycle_id)
    assert sorted(_log(t.frame_uri) for t in ranked.tasks) == ["b", "c", "d", "e"]


def test_bad_selection_is_refused_with_its_rule(coord):
    with pytest.raises(InvalidInput, match="at least one of score, diversity, balance"):
        coord.client.start_cycle(coord.pool.pool_id, 2, selection_spec=SelectionSpec(score=0))
    with pytest.raises(InvalidInput, match="log_cap must be >= 0"):
        coord.client.start_cycle(coord.pool.pool_id, 2, selection_spec=SelectionSpec(log_cap=-1))


def test_selection_needing_embeddings_from_a_model_without_them_fails_clearly():
    """The coordinator names the missing `embedding` output instead of picking blindly (checked in
    the core: a served model without the output gives FrameScore.embedding None)."""
    from services.coordinator.core.cycles import CyclesAndRanking
    from services.coordinator.domain import Candidate, Cycle, FrameScore, ModelVersion
    from services.coordinator.ranking import Ranked
    cyc = Cycle("c", "p", 1, "eem", ModelVersion("segmentation", 1), 2, 0.95, 0, 0.0,
                selection_spec=SelectionSpec.parse("diversity=1"))
    ranked = [Ranked(0.5, "f", Candidate("f", "u"), FrameScore("u", 0.5, "segmentation:1"))]
    with pytest.raises(FailedPrecondition, match="embedding"):
        CyclesAndRanking._compose(None, cyc, ranked, lambda batch: None)


def test_a_cycle_without_a_selection_picks_with_the_products_default(tmp_path, stack):
    """StartCycle without a selection: the coordinator's default_selection, DEFAULT_SELECTION out of
    the box (score and diversity), stored with the cycle; on this pool it takes one near-duplicate."""
    from segxal.selection import DEFAULT_SELECTION
    from services.coordinator.config import CoordinatorConfig
    assert CoordinatorConfig().default_selection == SelectionSpec.parse(DEFAULT_SELECTION)
    with database_url("sqlite", tmp_path) as url:
        cfg = coordinator_config(url, tmp_path / "storage", eem_target=stack.eem.target, ranking=FAST,
                                 default_selection=CoordinatorConfig().default_selection)
        with running_coordinator(cfg) as (_, c):
            pool = c.create_pool("default-selection")
            c.ingest(pool.pool_id, [image_folder_source(str(stack.root / log)) for log in ("a",) + OTHER_LOGS])
            c.register_model_version("segmentation", "repo/segmentation/1")
            cycle = c.start_cycle(pool.pool_id, 4)
            assert SelectionSpec.parse(DEFAULT_SELECTION).text() == "score=1,diversity=1"
            assert (cycle.selection_spec.score, cycle.selection_spec.diversity) == (1.0, 1.0)
            logs = [_log(t.frame_uri) for t in c.rank_cycle(cycle.cycle_id).tasks]
            assert logs.count("a") == 1, logs


def test_the_loops_default_is_the_products_selection():
    from segxal.al.loop import ALConfig
    from segxal.selection import DEFAULT_SELECTION
    from services.coordinator.main import build_parser, config_from_args
    assert ALConfig(data="d", out="o").selection == SelectionSpec.parse(DEFAULT_SELECTION)
    assert config_from_args(build_parser().parse_args([])).default_selection == SelectionSpec.parse(DEFAULT_SELECTION)
    assert config_from_args(build_parser().parse_args(["--default-selection", "score=1"])).default_selection \
        == SelectionSpec()
