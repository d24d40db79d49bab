"""The label-efficiency benchmark end to end on tiny synthetic data (bench/al_curve.py --quick)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.albench.harness import ALL_ARMS, BenchConfig, _cells, _load_data
from bench.albench.report import paired, pooled
from segxal.data.synth import SynthConfig, generate
from segxal.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
# the quick run trains ~40 tiny models: ~30 CPU-seconds, but minutes of wall time on a shared machine
pytestmark = pytest.mark.timeout(1800)


def _al_curve():
    spec = importlib.util.spec_from_file_location("al_curve", ROOT / "bench" / "al_curve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("al_bench") / "data"
    generate(SynthConfig(height=32, width=64, train_sequences=6, val_sequences=1, test_sequences=1), root)
    return root


@pytest.fixture(scope="module")
def quick_run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("al_bench_out")
    # one seed keeps this test short on a loaded machine; the paired statistics have their own test
    assert _al_curve().main(["--quick", "--seeds", "0", "--data", str(tiny_data), "--out", str(out)]) == 0
    return out, json.loads((out / "al.json").read_text())


def test_quick_runs_both_protocols_and_every_arm_end_to_end(quick_run):
    out, report = quick_run
    for name in ("al.json", "al.md", "al_frame.png", "al_region.png", "al_schedule.png"):
        assert (out / name).stat().st_size > 0, name
    cfg = report["config"]
    for arm in ALL_ARMS:
        budgets = cfg["frame_budgets"] if arm.protocol == "frame" else cfg["pixel_budgets"]
        for seed in cfg["seeds"]:
            recs = [r for r in report["runs"] if (r["protocol"], r["arm"], r["seed"]) == (arm.protocol, arm.name, seed)]
            assert [r["budget"] for r in recs] == list(budgets), (arm, seed)
            for r in recs:
                assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["near_miou"] <= 1.0
                assert set(r["vulnerable"]) == {"person", "rider", "bicycle", "motorcycle"}
                assert r["steps"] == cfg["steps"]
    md = (out / "al.md").read_text()
    assert "## frame protocol: mIoU" in md and "## region protocol: near-field mIoU" in md
    assert "## Verdict" in md and "Is the schedule long enough?" in md
    assert len(report["schedule"]) == len(cfg["seeds"]) * len(cfg["frame_budgets"])
    assert all(r["steps"] == 2 * cfg["steps"] for r in report["schedule"])


def test_seeds_run_side_by_side_and_merge_into_one_report(tiny_data, tmp_path):
    """--jobs: one process per seed (spawned), per-seed reports under <out>/seed-<s>, one merged
    report whose records equal what each seed's process wrote."""
    out = tmp_path / "par"
    args = ["--quick", "--seeds", "0", "1", "--jobs", "2", "--protocols", "frame", "--arms", "random", "entropy",
            "--no-schedule-check", "--data", str(tiny_data), "--out", str(out)]
    assert _al_curve().main(args) == 0
    merged = json.loads((out / "al.json").read_text())
    per_seed = [json.loads((out / f"seed-{s}" / "al.json").read_text()) for s in (0, 1)]
    assert merged["config"]["seeds"] == [0, 1] and sorted(c["seed"] for c in merged["cycle0"]) == [0, 1]
    key = lambda r: (r["arm"], r["seed"], r["budget"])  # noqa: E731
    assert sorted(map(key, merged["runs"])) == sorted(key(r) for p in per_seed for r in p["runs"])
    assert len(merged["runs"]) == 2 * 2 * len(merged["config"]["frame_budgets"])
    assert "| entropy |" in (out / "al.md").read_text()


def test_frame_protocol_spends_exactly_the_frame_budgets(quick_run):
    _, report = quick_run
    pool = report["n_train"] - report["config"]["seed_frames"]
    for r in report["runs"]:
        if r["protocol"] == "frame":
            assert r["cost"]["frames"] == round(r["budget"] * pool)
            machine = r["arm"].startswith("eem-machine")
            human = 0 if machine else r["cost"]["frames"] * 32 * 64
            assert r["cost"]["pixels"] == human
            if machine:  # what the oracle returned is on record: its threshold and the labeled share
                assert 0.0 <= r["diag"]["pseudo_labeled_share"] <= 1.0
                assert r["diag"]["tau"] is None or 0.0 <= r["diag"]["tau"] <= 1.0
                if r["arm"] == "eem-machine":
                    assert r["diag"]["tau"] == 0.9


def test_region_protocol_stays_within_the_pixel_budget(quick_run):
    _, report = quick_run
    pool_px = (report["n_train"] - report["config"]["seed_frames"]) * 32 * 64
    for r in report["runs"]:
        if r["protocol"] == "region":
            assert 0 < r["cost"]["pixels"] <= round(r["budget"] * pool_px)
            assert r["cost"]["regions"] >= r["cost"]["frames"] >= 1


def test_arms_of_a_seed_share_the_seed_set_and_random_picks_repeat(quick_run):
    _, report = quick_run
    # the schedule check reruns the random frame arm: same picks, only the step count differs
    main = {(r["seed"], r["budget"]): r["picks"] for r in report["runs"]
            if r["protocol"] == "frame" and r["arm"] == "random"}
    for r in report["schedule"]:
        assert r["picks"] == main[(r["seed"], r["budget"])]
    picks = [p for r in report["runs"] if r["protocol"] == "frame" and r["seed"] == 0 for p in r["picks"]]
    assert picks  # and no arm re-labels a frame it already has:
    for arm in {r["arm"] for r in report["runs"] if r["protocol"] == "frame"}:
        seq = [p for r in report["runs"] if (r["protocol"], r["arm"], r["seed"]) == ("frame", arm, 0)
               for p in r["picks"]]
        assert len(seq) == len(set(seq)), arm


def test_near_field_mask_is_nearer_than_20_m(tiny_data):
    data = _load_data(BenchConfig(data=str(tiny_data), out="", size=(32, 64)))
    assert data.near.shape == (len(data.val), 32, 64)
    # independent of segxal's decoders: the Cityscapes disparity encoding d = (p - 1) / 256 (p = 0:
    # invalid) read with PIL, depth = baseline * fx / d from the camera JSON
    for k, f in enumerate(data.val.frames):
        p = np.asarray(Image.open(f.disparity), dtype=np.float64)
        cam = json.loads(f.camera.read_text())
        with np.errstate(divide="ignore"):
            depth = cam["extrinsic"]["baseline"] * cam["intrinsic"]["fx"] / ((p - 1) / 256)
        expected = (p > 1) & (depth < 20.0)
        assert (data.near[k] == expected).mean() > 0.999
    assert 0 < data.near.mean() < 1
    assert data.near[:, -2:].mean() > 0.9  # the road just ahead of the car is near


def test_paired_difference_reports_no_difference_inside_the_spread():
    def rec(seed, v):
        return {seed: {"miou": v}}
    table = {"random": {0.1: {**rec(0, 0.50), **rec(1, 0.52), **rec(2, 0.48)}},
             "a": {0.1: {**rec(0, 0.53), **rec(1, 0.55), **rec(2, 0.51)}},  # +3 every seed
             "b": {0.1: {**rec(0, 0.55), **rec(1, 0.50), **rec(2, 0.47)}}}  # +5, -2, -1
    assert paired(table, "a", "random", 0.1, "miou")["verdict"] == "better"
    p = paired(table, "b", "random", 0.1, "miou")
    assert p["verdict"] == "=" and p["wins"] == 1 and np.isclose(p["mean"], 2 / 3)


def test_pooled_difference_averages_the_curve_per_seed_and_counts_pairs():
    budgets = [0.1, 0.2]
    table = {"random": {b: {s: {"miou": 0.5} for s in range(3)} for b in budgets},
             # +2 at 10 %, -1 at 20 % for every seed: the curve gains +0.5 a seed, 3 of 6 pairs won
             "a": {0.1: {s: {"miou": 0.52} for s in range(3)}, 0.2: {s: {"miou": 0.49} for s in range(3)}},
             # seed 2 lacks the 20 % point: only complete curves count
             "b": {0.1: {s: {"miou": 0.6} for s in range(3)}, 0.2: {s: {"miou": 0.6} for s in range(2)}}}
    q = pooled(table, "a", "random", "miou", budgets)
    assert np.isclose(q["mean"], 0.5) and q["seeds"] == 3 and q["seeds_won"] == 3
    assert (q["wins"], q["n"]) == (3, 6) and np.isclose(q["p"], 42 / 64)  # P(X >= 3), X ~ Bin(6, 1/2)
    q = pooled(table, "b", "random", "miou", budgets)
    assert q["seeds"] == 2 and q["wins"] == 4 and np.isclose(q["p"], 1 / 16)
    assert pooled(table, "c", "random", "miou", budgets) is None


def test_cells_tile_the_frame_score_by_the_map_mean_and_skip_labeled_pixels():
    m = np.zeros((32, 64), np.float32)
    m[:16, 48:] = 1.0  # the top-right cell is the hot one
    done = np.zeros((32, 64), bool)
    done[16:, :16] = True  # the bottom-left cell is labeled already
    cells = _cells(m, done, 16)
    assert len(cells) == 7  # 2 x 4 cells, one fully labeled
    cover = np.sum([c for c, _ in cells], axis=0)
    assert (cover == ~done).all()  # each unlabeled pixel in exactly one cell
    best = max(cells, key=lambda c: c[1])
    assert best[1] == 1.0 and best[0][:16, 48:].all() and best[0].sum() == 256


def test_bad_configuration_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(InvalidInput, match="unknown arm"):
        BenchConfig(data=str(tiny_data), out=str(tmp_path), arms=("nope",)).validate()
    with pytest.raises(InvalidInput, match="increasing fractions"):
        BenchConfig(data=str(tiny_data), out=str(tmp_path), frame_budgets=(0.2, 0.1)).validate()
    with pytest.raises(InvalidInput, match="budget_steps has 2 entries"):
        BenchConfig(data=str(tiny_data), out=str(tmp_path), budget_steps=(10, 20)).validate()
    assert _al_curve().main(["--quick", "--data", str(tiny_data), "--out", str(tmp_path),
                             "--budget-steps", "1", "2", "3"]) == 2  # a CLI message, not a traceback


def test_a_schedule_that_grows_with_the_labeled_set(tiny_data, tmp_path):
    args = ["--quick", "--seeds", "0", "--jobs", "1", "--protocols", "frame", "--arms", "random",
            "--budget-steps", "3", "6", "--data", str(tiny_data), "--out", str(tmp_path)]
    assert _al_curve().main(args) == 0
    report = json.loads((tmp_path / "al.json").read_text())
    assert [r["steps"] for r in report["runs"]] == [3, 6]
    assert [r["steps"] for r in report["schedule"]] == [6, 12]  # the check doubles each point
    assert "steps per budget point 3 / 6" in (tmp_path / "al.md").read_text()
