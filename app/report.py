"""The main job's report: a record and a table row per cycle, the drive log ranked by the final
model, and overlays of its top frames (frame | EEM heat map with regions | prediction)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.labels import colorize
from segxal.storage import FrameStorage
from services.coordinator.client import CoordinatorClient
from services.eem.api import ScoreOptions
from services.eem.client import EemClient


def cycle_record(cycle, job, version, seed_px, budget, report, t_start, seed_frames) -> dict:
    spent = (budget.spent_frames, budget.spent_regions, budget.spent_pixels) if budget else (0, 0, 0)
    mean_dice = None
    if report is not None and report.annotations_with_dice and np.isfinite(report.mean_dice):
        mean_dice = float(report.mean_dice)
    return {"cycle": cycle, "miou": job["miou"], "per_class": job["per_class"], "model_version": version,
            "publish_refused": job["publish_refused"],
            "labeled": {"frames": seed_frames + spent[0], "regions": spent[1], "pixels": seed_px + spent[2]},
            "mean_dice": mean_dice, "seconds": time.time() - t_start, "stop_reason": ""}


def cam_degenerate_share(before, after) -> float | None:
    """Share of the frames the EEM service scored between two Stats whose CAM was dead (all zero
    or constant): the health of the explanation term for the model version that ranked them."""
    scored = after.frames_scored - before.frames_scored
    return (after.frames_cam_degenerate - before.frames_cam_degenerate) / scored if scored > 0 else None


def version_cam_health(stats, model_version: str) -> dict | None:
    """The EEM service's running CAM health of one segmentation model version (Stats.cam_health:
    every frame the service scored with it so far), as cycles.json keeps it; None when the service
    has not scored a frame with that version's CAM (a model without one, or nothing ranked).

    Args:
        stats: services.eem.api.Stats.
        model_version: "<model name>:<version>", as the EEM service names it.
    """
    for h in stats.cam_health:
        if h.model_version == model_version:
            return {"model_version": h.model_version, "frames": h.frames, "dead_share": h.dead_share,
                    "cam_ebu_correlation": h.cam_ebu_correlation, "cam_dead": h.cam_dead,
                    "cam_confidence_map": h.cam_confidence_map}
    return None


def table_row(r: dict) -> str:
    lab = r["labeled"]
    dice = "-" if r["mean_dice"] is None else f"{r['mean_dice']:.3f}"
    cam = r.get("cam_degenerate_share")
    cam = "" if cam is None else f"  CAM dead {100 * cam:4.1f} %"
    health = r.get("cam_health")
    if health is not None:  # the ranking version's running figures (flags: ! dead, ? confidence map)
        corr = health["cam_ebu_correlation"]
        flags = ("!" if health["cam_dead"] else "") + ("?" if health["cam_confidence_map"] else "")
        cam += (f"  v{health['model_version'].rsplit(':', 1)[-1]} dead {100 * health['dead_share']:4.1f} % "
                f"corr(CAM,EBU) {'-' if corr is None else f'{corr:+.2f}'}{flags}")
    note = f"  (publish refused: {r['publish_refused']})" if r["publish_refused"] else ""
    return (f"cycle {r['cycle']:>2}  mIoU {100 * r['miou']:6.2f}  v{r['model_version']:<3} frames {lab['frames']:>4} "
            f"regions {lab['regions']:>4} pixels {lab['pixels']:>9}  DICE {dice:>6}{cam}  {r['seconds']:6.1f} s{note}")


def rank_drive_log(coord: CoordinatorClient, pool_id: str, model_name: str, version: int, eem: EEMOptions,
                   top: int = 5) -> list[dict]:
    """Rank the drive log with the final model: what a fleet run would send to labelers next."""
    cyc = coord.start_cycle(pool_id, top, selection="eem", model_name=model_name,
                            model_version=version, eem=eem)
    coord.rank_cycle(cyc.cycle_id)
    tasks = coord.lease(pool_id, top, 60.0, cycle_id=cyc.cycle_id)
    out = [{"frame_uri": t.frame_uri, "score": t.score, "regions": len(t.regions)} for t in tasks]
    for t in tasks:
        coord.release(t)
    return out


def render_overlays(eem_target: str, uris: list[str], storage: FrameStorage, dest: Path,
                    eem: EEMOptions) -> list[str]:
    """The drive log's top frames with their EEM heat map and regions to fix drawn over them:
    frame | EEM overlay with region boxes | prediction."""
    import cv2
    paths = []
    opts = ScoreOptions(eem=eem, maps=("eem",), regions=True, labels=True)
    with EemClient(eem_target) as eem:
        for rank, uri in enumerate(uris, 1):
            res = eem.score(uri, opts)
            rgb = storage.read_rgb(uri)
            heat = res.map("eem").astype(np.float32)
            heat = heat / max(float(heat.max()), 1e-6)
            colored = cv2.applyColorMap((255 * heat).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            over = (0.55 * rgb + 0.45 * colored).astype(np.uint8)
            for r in res.regions:
                x, y, bw, bh = r.bbox
                cv2.rectangle(over, (x, y), (x + bw - 1, y + bh - 1), (255, 255, 255), 1)
            pred = colorize(res.labels())
            panel = np.concatenate([rgb, over, pred], axis=1)
            path = dest / f"drive_log_top{rank}_eem.png"
            imageio.write_png(path, np.ascontiguousarray(panel))
            paths.append(str(path))
    return paths
