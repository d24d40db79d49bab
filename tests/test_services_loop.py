"""The main job end to end through the real services (five processes), on tiny sizes, and its
agreement with the in-process loop on the same seed."""
import json

import pytest

from segxal.al.loop import ALConfig
from segxal.al.loop import run as run_in_process
from app.loop import ServicesLoopConfig
from app.loop import run as run_services


def _cfg(data, out, cache, **kw):
    base = dict(data=str(data), out=str(out), size=(64, 128), width=8, unet_depth=2, seed_frames=6,
                cycles=2, budget=4, init_epochs=3, finetune_epochs=1, depth_epochs=1, batch_size=4,
                progress=False, cache_dir=str(cache))
    base.update(kw)
    return ALConfig(**base)


@pytest.fixture(scope="module")
def both_loops(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("loops")
    cache = root / "cache"
    services = run_services(ServicesLoopConfig(al=_cfg(tiny_dataset, root / "services", cache), drive_log_frames=4,
                                               overlays=2, miou_tolerance=1.0))
    in_process = run_in_process(_cfg(tiny_dataset, root / "in_process", cache))
    return root, services, in_process


def test_services_loop_runs_every_stage_and_writes_the_report(both_loops):
    root, report, _ = both_loops
    out = root / "services"
    assert json.loads((out / "cycles.json").read_text())["stop_reason"] == report["stop_reason"]
    assert (out / "miou_vs_pixels.png").read_bytes()[:4] == b"\x89PNG"
    assert len(report["overlays"]) == 2 and all((out / "overlays").iterdir())
    recs = report["cycles"]
    assert [r["model_version"] for r in recs] == list(range(1, len(recs) + 1))  # published and hot-reloaded
    assert report["stop_reason"] in ("budget", "dice", "cycles")
    assert recs[-1]["labeled"]["frames"] <= 6 + 4  # the budget holds
    assert all(r["mean_dice"] is not None for r in recs[1:])
    # the CAM health of the version that ranked each cycle, from the EEM service's counters
    assert all(0.0 <= r["cam_degenerate_share"] <= 1.0 for r in recs[1:])
    assert report["drive_log"]["frames_ingested"] >= 1 and report["drive_log"]["top_frames"]


def test_services_loop_agrees_with_the_in_process_loop(both_loops):
    _, services, in_process = both_loops
    s, p = services["cycles"], in_process["cycles"]
    # cycle 0: same seed set, same initial weights, same training order -> the same model
    assert s[0]["miou"] == pytest.approx(p[0]["miou"], abs=1e-9)
    assert s[0]["labeled"]["pixels"] == p[0]["labeled"]["pixels"]
    # later cycles rank on float16 maps from ONNX Runtime (in-process: float32 torch), so a near
    # tie may pick another frame; measured at the main job's size: identical at cycle 0, within 2.5
    # points after (the services loop alone varies ~1.6 points run to run: dynamic batching)
    for a, b in zip(s[1:], p[1:]):
        assert abs(a["miou"] - b["miou"]) <= 0.10
