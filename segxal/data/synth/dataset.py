"""Writing a dataset: drive logs rendered into a temporary folder (in parallel when asked), renamed into place whole."""
from __future__ import annotations

import logging
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import id2label

from segxal import imageio
from segxal.errors import InvalidInput
from segxal.labels import label_ids_to_train_ids
from segxal.data.synth.config import CITIES, FORMAT_VERSION, SIDECAR, SPLITS, SynthConfig, _validate
from segxal.data.synth.camera import Camera
from segxal.data.synth.frames import render_sequence

log = logging.getLogger(__name__)


def _write_sequence(job: tuple) -> tuple:
    """Render and write one drive log into `root`; returns (split, labelId pixel counts [256])."""
    cfg, root, split, index = job
    counts = np.zeros(256, np.int64)
    city = CITIES[split][index % len(CITIES[split])]
    dirs = {kind: Path(root) / kind / split / city for kind in ("leftImg8bit", "gtFine", "disparity", "camera")}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    for k, rgb, label, disparity, meta, instances in render_sequence(cfg, split, index):
        stem = f"{city}_{index:06d}_{k:06d}"
        # Plain writes: the whole dataset is built in a temporary folder that is renamed at the end,
        # so per-file atomic writes (an fsync each) would only slow generation down.
        (dirs["leftImg8bit"] / f"{stem}_leftImg8bit.png").write_bytes(imageio.encode_png(rgb))
        (dirs["gtFine"] / f"{stem}_gtFine_labelIds.png").write_bytes(imageio.encode_png(label))
        (dirs["gtFine"] / f"{stem}_gtFine_labelTrainIds.png").write_bytes(
            imageio.encode_png(label_ids_to_train_ids(label, where=stem)))
        (dirs["gtFine"] / f"{stem}_gtFine_instanceIds.png").write_bytes(imageio.encode_png(instances))
        (dirs["disparity"] / f"{stem}_disparity.png").write_bytes(
            imageio.encode_png(imageio.encode_disparity(disparity)))
        (dirs["camera"] / f"{stem}_camera.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        counts += np.bincount(label.ravel(), minlength=256)
    return split, counts


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out` that is a file, or not empty without overwrite, or not ours."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidInput(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise InvalidInput(f"{out}: exists and is not empty; pass --overwrite to replace it")
    if not (out / SIDECAR).is_file():
        raise InvalidInput(f"{out}: refusing to overwrite a folder that is not a synthetic dataset "
                           f"(no {SIDECAR}); remove it yourself or choose another --out")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to `out`, replacing what _check_destination allowed."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "data")
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "data", out)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _quiet_worker() -> None:
    """Pool workers leave Ctrl-C to the parent (which terminates them) and die on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def generate(cfg: SynthConfig, out: Path, *, overwrite: bool = False, workers: int = 1) -> Path:
    """Write a synthetic dataset in the Cityscapes layout to `out`.

    Everything is written into a temporary folder beside `out`, which is renamed to `out` only when
    complete; on any error or interrupt it is removed, so `out` is either absent, untouched or whole.

    Args:
        cfg: what to generate; the files depend on nothing else (byte-identical for one cfg).
        out: destination folder; must be absent or empty unless `overwrite`.
        overwrite: replace an existing dataset that this generator wrote (it holds synth.json).
        workers: processes rendering sequences in parallel (output does not depend on it).

    Returns:
        `out`.

    Raises:
        InvalidInput: an invalid config, or `out` exists and may not be replaced.
    """
    _validate(cfg)
    if workers < 1:
        raise InvalidInput(f"workers must be >= 1, got {workers}")
    out = Path(out)
    _check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    start = time.perf_counter()
    try:
        n = {"train": cfg.train_sequences, "val": cfg.val_sequences, "test": cfg.test_sequences}
        jobs = [(cfg, str(tmp), split, i) for split in SPLITS for i in range(n[split])]
        counts = {split: np.zeros(256, np.int64) for split in SPLITS}
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _quiet_worker) as pool:
                results = list(pool.imap(_write_sequence, jobs))
        else:
            results = map(_write_sequence, jobs)
        for split, c in results:
            counts[split] += c
        _write_sidecar(tmp, cfg, counts)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    frames = sum(n.values()) * cfg.frames_per_sequence
    took = time.perf_counter() - start
    log.info("wrote %d frames (%dx%d) to %s in %.1f s (%.1f frames/s)", frames, cfg.height, cfg.width,
             out, took, frames / max(took, 1e-9))
    return out


def _write_sidecar(root: Path, cfg: SynthConfig, counts: dict) -> None:
    """synth.json: generator, config, camera, cities and labelId pixel counts per split."""
    names = {i: label.name for i, label in id2label.items() if i >= 0}
    record = {
        "generator": "segxal.data.synth", "format_version": FORMAT_VERSION, "config": asdict(cfg),
        "camera": Camera.cityscapes_like(cfg.height, cfg.width).to_json(),
        "cities": {s: list(CITIES[s]) for s in SPLITS},
        "label_pixel_counts": {s: {names[i]: int(c[i]) for i in np.nonzero(c)[0]} for s, c in counts.items()},
    }
    (root / SIDECAR).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
