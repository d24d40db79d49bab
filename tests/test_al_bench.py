"""The label-efficiency benchmark end to end on tiny synthetic data (bench/al_curve.py --quick)."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.albench.harness import (ALL_ARMS, EEM_VARIANTS, PROTOCOLS, REPORT_FILE, Arm, BenchConfig, PoolOutputs,
                                   _SeedContext, cell_masks, load_data, load_report, pick_cells)
from segxal.eem.options import EEMOptions
from segxal.data.synth import SynthConfig, generate
from segxal.errors import InvalidInput
from segxal.selection import DEFAULT_SELECTION, SelectionSpec

ROOT = Path(__file__).resolve().parents[1]
# the quick run trains ~100 tiny decoders: ~10 CPU-seconds, up to a minute of wall time when shared
pytestmark = pytest.mark.timeout(900)


def _al_curve():
    spec = importlib.util.spec_from_file_location("al_curve", ROOT / "bench" / "al_curve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("al_bench")
    generate(SynthConfig(height=32, width=64, train_sequences=6, val_sequences=1, test_sequences=1), root / "d")
    generate(SynthConfig(height=32, width=64, train_sequences=2, val_sequences=1, test_sequences=1, seed=1),
             root / "p")
    return root / "d", root / "p"


@pytest.fixture(scope="module")
def quick_run(tiny, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("al_bench_out")
    data, pre = tiny
    assert _al_curve().main(["--quick", "--data", str(data), "--pretrain-data", str(pre), "--out", str(out)]) == 0
    return out, load_report(out / REPORT_FILE)


def test_one_invocation_runs_every_arm_of_both_protocols_and_records_its_commit(quick_run):
    out, report = quick_run
    for name in (REPORT_FILE, "al.md", "al_frame.png", "al_region.png"):
        assert (out / name).stat().st_size > 0, name
    cfg = report["config"]
    assert len(report["commit"]["commit"]) == 40 and report["report_split"] == "test"
    for arm in ALL_ARMS:
        budgets = cfg["frame_budgets"] if arm.protocol == "frame" else cfg["pixel_budgets"]
        seeds = cfg["seeds"] if arm.key else cfg["seeds"][:cfg["exploratory_seeds"]]
        draws = cfg["random_draws"] if arm.score == "random" else 1
        recs = [r for r in report["runs"] if (r["protocol"], r["arm"]) == (arm.protocol, arm.name)]
        assert sorted({r["seed"] for r in recs}) == sorted(seeds), arm
        assert len(recs) == len(seeds) * draws * len(budgets), arm
        for r in recs:
            assert 0.0 <= r["miou"] <= 1.0 and set(r["vulnerable"]) == {"person", "rider", "bicycle", "motorcycle"}
            assert r["steps"] == cfg["steps"]
    assert all(r["steps"] == 2 * cfg["steps"] for r in report["schedule"])
    assert len(report["schedule"]) == len(cfg["seeds"]) * len(cfg["frame_budgets"])  # every seed: its power
    md = (out / "al.md").read_text()
    assert "Primary endpoints (fixed before the run" in md and report["commit"]["commit"] in md
    assert "## frame protocol: primary endpoint" in md and "## region protocol: primary endpoint" in md
    assert "| p Holm |" in md and "Is the schedule long enough?" in md
    assert "Secondary comparisons (fixed before the run" in md and "| eem | eem-add | secondary |" in md


def test_frame_protocol_spends_exactly_the_frame_budgets(quick_run):
    _, report = quick_run
    pool = report["n_train"] - report["config"]["seed_frames"]
    for r in report["runs"]:
        if r["protocol"] == "frame":
            assert r["cost"]["frames"] == r["target"] == round(r["budget"] * pool), r["arm"]
            assert r["shortfall"] == 0 and r["cost"]["pixels"] == r["cost"]["frames"] * 32 * 64


def test_region_protocol_spends_exactly_the_pixel_budget_in_whole_cells(quick_run):
    _, report = quick_run
    cfg = report["config"]
    cell = cfg["cell_px"] ** 2
    pool_px = (report["n_train"] - cfg["seed_frames"]) * 32 * 64
    for r in report["runs"]:
        if r["protocol"] == "region":
            assert r["cost"]["pixels"] == r["target"] == round(r["budget"] * pool_px / cell) * cell, r["arm"]
            assert r["shortfall"] == 0 and r["cost"]["regions"] * cell == r["cost"]["pixels"]


def test_no_arm_labels_a_frame_twice_and_random_draws_differ(quick_run):
    _, report = quick_run
    frame = [r for r in report["runs"] if r["protocol"] == "frame"]
    for arm, seed, draw in {(r["arm"], r["seed"], r["draw"]) for r in frame}:
        seq = [p for r in frame if (r["arm"], r["seed"], r["draw"]) == (arm, seed, draw) for p in r["picks"]]
        assert len(seq) == len(set(seq)), arm
    draws = {r["draw"]: r["picks"] for r in frame if r["arm"] == "random" and r["seed"] == 0
             and r["budget"] == report["config"]["frame_budgets"][-1]}
    assert len(draws) == report["config"]["random_draws"] and draws[0] != draws[1]


def test_random_cells_match_the_size_and_count_of_the_cells_a_map_selects(quick_run, tiny):
    """On a known pool: the map arm takes the hot cells; random takes as many cells of the same size."""
    out, report = quick_run
    data_dir, pre = tiny
    cfg = replace(BenchConfig(**{**report["config"], "size": tuple(report["config"]["size"])}),
                  cache_dir=str(out / "cache"))
    data = load_data(cfg)
    n, (h, w), side = len(data.train), cfg.size, cfg.cell_px
    pool = list(range(1, n))
    maps = np.zeros((len(pool), h, w), np.float32)
    hot = {(pool[3], 5), (pool[7], 2)}  # (frame, cell): the only cells where the map is high
    cells = cell_masks((h, w), side)
    for i, c in hot:
        maps[pool.index(i)][cells[c]] = 1.0
    maps += np.linspace(0, 1e-3, h * w, dtype=np.float32).reshape(h, w)  # a tie-break that is not the hot cells
    out0 = PoolOutputs(labels=np.zeros((n, h, w), np.uint8), ebu=np.zeros((n, h, w), np.float16),
                       cam=np.zeros((n, h, w), np.float16), pmax=np.ones((n, h, w), np.float16),
                       embedding=data.train_feats.embedding, class_hist=np.full((n, 19), 1 / 19, np.float32))
    ctx = _SeedContext(0, [0], pool, None, out0, {})
    by_map = pick_cells(next(a for a in ALL_ARMS if a.name == "entropy" and a.protocol == "region"), ctx, data,
                        out0, maps, {}, 2, 1, len(cells), np.random.default_rng(0), side)
    assert set(by_map) == hot
    by_random = pick_cells(Arm("random", "region", "random"), ctx, data, out0, None, {}, 2, 1,
                           len(cells), np.random.default_rng(0), side)
    assert len(by_random) == len(by_map) == 2
    assert {int(cells[c].sum()) for _, c in by_random + by_map} == {side * side}


def test_every_arm_is_a_valid_product_selection():
    for arm in ALL_ARMS:
        spec = SelectionSpec.parse(arm.selection)
        assert spec.validate() is spec
    coreset = next(a for a in ALL_ARMS if a.name == "coreset")
    assert coreset.spec.score == 0 and coreset.spec.diversity > 0  # diversity alone: k-center greedy
    assert {a.name for a in ALL_ARMS if a.key and a.protocol == "frame"} == {"random", "entropy", "coreset", "eem-add",
                                                                            "eem", "eem+div"}


def test_the_eem_arms_are_the_products_default_and_the_papers_additive_fusion():
    arms = {(a.protocol, a.name): a for a in ALL_ARMS}
    for protocol in PROTOCOLS:
        assert EEM_VARIANTS[arms[protocol, "eem"].eem] == EEMOptions()  # what the coordinator ranks by
        assert EEM_VARIANTS[arms[protocol, "eem+div"].eem] == EEMOptions()
        assert SelectionSpec.parse(arms[protocol, "eem+div"].selection) == SelectionSpec.parse(DEFAULT_SELECTION)
        add = EEM_VARIANTS[arms[protocol, "eem-add"].eem]
        assert (add.fusion, add.alpha, add.beta) == ("additive", 0.5, 0.5)


def test_seeds_spread_over_worker_processes_give_the_same_records_as_one_process(quick_run, tiny, tmp_path):
    _, one = quick_run
    data, pre = tiny
    out = tmp_path / "jobs2"
    assert _al_curve().main(["--quick", "--data", str(data), "--pretrain-data", str(pre), "--out", str(out),
                             "--jobs", "2"]) == 0
    two = load_report(out / REPORT_FILE)
    assert two["jobs"] == 2 and two["skipped_seeds"] == []

    def key(r):
        return r["protocol"], r["arm"], r["seed"], r.get("draw", 0), r["budget"]

    def same(report):  # what each arm labelled (frames, or cells) and what it scored
        return {key(r): (r["picks"], r["cost"], round(r["miou"], 6)) for r in report["runs"]}

    assert same(one) == same(two) and len(same(one)) == len(one["runs"])


def test_the_deadline_bounds_a_run_whose_exploratory_arms_cover_every_seed(tiny, tmp_path):
    """Past the deadline no new seed starts, whatever arms it would run; the first MIN_SEEDS always run."""
    from bench.albench.harness import MIN_SEEDS
    data, pre = tiny
    out = tmp_path / "deadline"
    assert _al_curve().main(["--quick", "--data", str(data), "--pretrain-data", str(pre), "--out", str(out),
                             "--seeds", "0", "1", "2", "3", "4", "--exploratory-seeds", "5", "--arms", "random",
                             "eem", "--protocols", "frame", "--deadline-min", "1e-6"]) == 0
    report = load_report(out / REPORT_FILE)
    assert MIN_SEEDS == 3 and report["skipped_seeds"] == [3, 4]
    assert {r["seed"] for r in report["runs"]} == {0, 1, 2}


def test_near_field_mask_is_nearer_than_20_m_on_the_report_split(quick_run):
    out, report = quick_run
    cfg = replace(BenchConfig(**{**report["config"], "size": tuple(report["config"]["size"])}),
                  cache_dir=str(out / "cache"))
    data = load_data(cfg)
    from segxal.data.cityscapes import list_frames
    frames = list_frames(cfg.data, "test", require_labels=True)
    assert data.near.shape == (len(frames), 32, 64)
    for k, f in enumerate(frames):  # independent of segxal's decoders: d = (p - 1) / 256, depth = b fx / d
        p = np.asarray(Image.open(f.disparity).resize((64, 32), Image.NEAREST), dtype=np.float64)
        cam = json.loads(f.camera.read_text())
        with np.errstate(divide="ignore"):
            depth = cam["extrinsic"]["baseline"] * cam["intrinsic"]["fx"] / ((p - 1) / 256)
        assert (data.near[k] == ((p > 1) & (depth < 20.0))).mean() > 0.95
    assert 0 < data.near.mean() < 1


def test_report_renders_again_from_its_json(quick_run, tmp_path):
    out, report = quick_run
    note = tmp_path / "reading.md"
    note.write_text("**Reading.** what the intervals say")
    assert _al_curve().main(["--report", str(out / REPORT_FILE), "--note", str(note), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "al.md").read_text()
    assert "what the intervals say" in md  # the reading goes in; every table is what the run wrote
    assert md.replace(note.read_text() + "\n\n", "") == (out / "al.md").read_text()
    assert (tmp_path / REPORT_FILE).read_bytes() == (out / REPORT_FILE).read_bytes()  # same report, same bytes
    plain = tmp_path / "old" / "al.json"  # an earlier run's uncompressed report renders too
    plain.parent.mkdir()
    plain.write_text(json.dumps(report))
    assert _al_curve().main(["--report", str(plain), "--out", str(tmp_path / "old")]) == 0


def test_bad_configuration_is_a_clear_error(tiny, tmp_path, capsys):
    data, pre = tiny
    base = BenchConfig(data=str(data), out=str(tmp_path), pretrain_data=str(pre))
    with pytest.raises(InvalidInput, match="unknown arm"):
        replace(base, arms=("nope",)).validate()
    with pytest.raises(InvalidInput, match="increasing fractions"):
        replace(base, frame_budgets=(0.2, 0.1)).validate()
    with pytest.raises(InvalidInput, match="must not be the benchmark's data"):
        replace(base, pretrain_data=str(data)).validate()
    with pytest.raises(InvalidInput, match="multiple of"):
        replace(base, size=(40, 128)).validate()
    assert _al_curve().main(["--quick", "--data", str(data), "--pretrain-data", str(data), "--out",
                             str(tmp_path)]) == 2  # a CLI message, not a traceback
    assert "error: pretrain_data must not be" in capsys.readouterr().err


def test_cam_target_arms_differ_from_the_shipped_eem_only_in_the_cams_target(tiny, tmp_path):
    """The arms of issue 32's CAM targets: the explainer of the traced route gives the written-out
    VJP's CAM for both of its targets on the benchmark's frozen-body U-Net; another target changes
    the CAM and nothing else."""
    from bench.albench.harness import pool_outputs, seed_model, with_cam_target
    from segxal.eem.gradcam import DEFAULT_UNET_CAM_TARGET
    data_dir, pre = tiny
    cfg = _al_curve().quick(BenchConfig(data=str(data_dir), out=str(tmp_path), pretrain_data=str(pre)))
    data = load_data(cfg)
    import torch
    from segxal.eem.explain import ExplainedSegmenter
    model = seed_model(cfg, data, [0, 1], seed=0)
    with torch.no_grad():  # a head that predicts several classes a frame, where the targets differ
        model.head.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
        model.head.bias.zero_()
    out = pool_outputs(model, data, cfg, with_bald=False)  # the product's ExplainedSegmenter
    assert all(len(np.unique(lab)) > 1 for lab in out.labels[:8])
    x = torch.from_numpy(data.train_images[:8])
    with torch.inference_mode():
        product = ExplainedSegmenter(model.eval())(x)[2]  # the product's default target
        vjp = ExplainedSegmenter(model.eval(), cam_target="class-agnostic")(x)[2]
    assert np.abs(out.cam[:8].astype(np.float32) - product.numpy()).max() <= 2e-3  # float16 steps
    same = with_cam_target(out, model, data, DEFAULT_UNET_CAM_TARGET)  # the traced route's explainer
    assert np.abs(same.cam.astype(np.float32) - out.cam.astype(np.float32)).max() <= 2e-3
    agnostic = pool_outputs(model, data, cfg, with_bald=False, cam_target="class-agnostic")
    assert np.abs(agnostic.cam[:8].astype(np.float32) - vjp.numpy()).max() <= 2e-3
    hires = pool_outputs(model, data, cfg, with_bald=False, cam_method="hirescam")  # the VJP's HiResCAM
    traced_hires = with_cam_target(out, model, data, DEFAULT_UNET_CAM_TARGET, method="hirescam")
    assert np.abs(hires.cam.astype(np.float32) - traced_hires.cam.astype(np.float32)).max() <= 2e-3
    for other in (agnostic, hires, pool_outputs(model, data, cfg, with_bald=False, cam_target="ebu-gradient")):
        assert not np.array_equal(other.cam, out.cam)
        for k in ("labels", "ebu", "pmax", "embedding", "class_hist"):
            assert np.array_equal(getattr(other, k), getattr(out, k)), k
    arms = {(a.protocol, a.name): a for a in ALL_ARMS}
    for protocol in PROTOCOLS:
        assert arms[protocol, "eem"].cam_target == DEFAULT_UNET_CAM_TARGET
        for name, target, method in (("eem-ebugrad", "ebu-gradient", "gradcam"),
                                     ("eem-clsagn", "class-agnostic", "gradcam"),
                                     ("eem-hires", DEFAULT_UNET_CAM_TARGET, "hirescam")):
            arm = arms[protocol, name]
            assert (arm.score, arm.eem, arm.selection, arm.cam) == ("eem", "multiplicative", "score=1", (target, method))
