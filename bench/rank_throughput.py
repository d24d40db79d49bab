"""Ranking throughput at camera resolution: frames from storage through the EEM service (decode,
resize to the model's declared input size, segmentation and depth on the inference server, EEM,
regions) against in-process ONNX Runtime doing the two forwards alone at that input size.

    .venv/bin/python bench/rank_throughput.py [--frames 16] [--size 256x512] [--concurrency 4]
        [--rounds 2] [--workdir DIR]

- Frames: synthetic Cityscapes-layout scenes rendered at 1024 x 2048 and stored as PNG (as
  Cityscapes ships them), and the same scenes at 1920 x 1080 as JPEG quality 90 (as dash cameras
  write them); a few distinct frames, cycled.
- Models: the default U-Net (width 32, depth 4) and depth net, random weights (speed does not depend
  on them), exported at --size and declared with that input size (config.pbtxt `input_size`: the
  inference client resizes every frame to it and brings the maps back at the frame's size).
- End to end: `python -m services.inference.main` and `python -m services.eem.main` as processes,
  one EemClient stream with regions, the EEM service's default concurrency.
- In-process reference: the same two ONNX files in this process (the server's ONNX Runtime
  settings), --concurrency threads each running segmentation then depth on frames already at the
  input size: what the models alone cost.
- Decoders: Pillow, OpenCV and simplejpeg on the stored frames, and which one segxal/imageio.py uses.
- Stages: CPU ms per frame of each step, measured one frame at a time in this process.
Both sides alternate (--rounds) so other load on a shared machine hits them alike; the load average
is printed beside each figure. CPU ms per frame counts every process involved.
"""
from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
from cpu_time import cpu_seconds  # bench/ is on sys.path when a bench runs as a script

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"png-1024x2048": (1024, 2048), "jpeg-1920x1080": (1080, 1920)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frames(folder: Path, n_distinct: int) -> dict[str, list[Path]]:
    """PNG frames at 1024 x 2048 from the synthetic generator, and JPEG 1920 x 1080 copies."""
    from PIL import Image

    from segxal import imageio
    from segxal.data.synth import SynthConfig, generate
    out = folder / "frames"
    if not (out / "leftImg8bit").is_dir():
        generate(SynthConfig(height=1024, width=2048, train_sequences=0, val_sequences=max(1, n_distinct // 3),
                             test_sequences=0, frames_per_sequence=3, seed=5), out)
    pngs = sorted((out / "leftImg8bit").rglob("*_leftImg8bit.png"))[:n_distinct]
    jpegs = []
    for p in pngs:
        j = folder / "jpeg" / (p.stem + ".jpg")
        if not j.is_file():
            j.parent.mkdir(parents=True, exist_ok=True)
            small = np.asarray(Image.fromarray(imageio.read_rgb(p)).resize((1920, 1080), Image.BILINEAR))
            j.write_bytes(imageio.encode_jpeg(small, quality=90))
        jpegs.append(j)
    return {"png-1024x2048": pngs, "jpeg-1920x1080": jpegs}


def _export(folder: Path, h: int, w: int):
    """Default U-Net and depth net exported at h x w, published with input_size declared."""
    import torch

    from segxal.export import ExportConfig, export_depth, export_segmentation
    from segxal.models.depth import DepthNet
    from segxal.models.unet import UNet
    from services.common.model_repository import ModelRepository, build_config
    repo = ModelRepository(folder / "repo")
    if repo.root.is_dir() and set(repo.list_models()) == {"segmentation", "depth"}:
        return repo
    torch.manual_seed(0)
    cfg = ExportConfig(trace_hw=(h, w), parity_batch=1)
    for name, export, model in (("segmentation", export_segmentation, UNet()), ("depth", export_depth, DepthNet())):
        result = export(model, folder / "export" / name / "model.onnx", cfg)
        spec = replace(result.spec, input_size=(h, w))  # the size every frame is resized to
        repo.publish(name, result.path, build_config(name, spec))
    return repo




def _timedcpu_seconds(fn, reps: int) -> float:
    """CPU ms per call of fn (this thread's process time; run alone)."""
    fn()
    c0 = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - c0) / reps * 1e3


def _decoders(files: list[Path], reps: int) -> dict[str, dict[str, float]]:
    """CPU ms per frame of each decoder on the files, and whether its pixels equal Pillow's."""
    import cv2
    import simplejpeg
    from PIL import Image

    from segxal import imageio
    data = [f.read_bytes() for f in files]
    pillow = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
    opencv = lambda b: cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR  # noqa: E731
                                                 | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)
    decoders = {"pillow": pillow, "opencv": opencv, "segxal.imageio": imageio.decode_image}
    if files[0].suffix == ".jpg":
        decoders["simplejpeg"] = lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB")
    out = {}
    for name, fn in decoders.items():
        same = all(np.array_equal(fn(b), pillow(b)) for b in data)
        out[name] = dict(cpu_ms=_timedcpu_seconds(lambda: [fn(b) for b in data], reps) / len(data), same=same)
    return out


def _stages(files: list[Path], seg, depth, seg_spec, depth_spec, reps: int) -> dict[str, float]:
    """CPU ms per frame of each step the EEM path takes, one frame at a time in this process."""
    from segxal import imageio
    from segxal.eem.options import EEMOptions
    from segxal.eem.frame import score_frame
    from segxal.resize import resize_image
    from services.inference.client import _prepare_images, _restore
    data = files[0].read_bytes()
    image = imageio.decode_image(data)[None]  # [1, H, W, 3]
    seg_in, plan = _prepare_images(seg_spec, image)
    depth_in, dplan = _prepare_images(depth_spec, image)
    seg_out = seg.run(seg_in, seg.output_names)
    depth_out = depth.run(depth_in, depth.output_names)
    maps = {k: _restore(v, plan, nearest=(k == "labels")) for k, v in seg_out.items()}
    inv = _restore(next(iter(depth_out.values())), dplan, nearest=False)
    return {
        "read file": _timedcpu_seconds(lambda: files[0].read_bytes(), reps),
        "decode (segxal.imageio)": _timedcpu_seconds(lambda: imageio.decode_image(data), reps),
        "resize to input (once: both models)": _timedcpu_seconds(lambda: resize_image(image[0], plan.content_hw), reps),
        "(old path) resize to input (x2: seg, depth)": _timedcpu_seconds(lambda: (_prepare_images(seg_spec, image),
                                                                _prepare_images(depth_spec, image)), reps),
        "segmentation forward": _timedcpu_seconds(lambda: seg.run(seg_in, seg.output_names), max(1, reps // 2)),
        "depth forward": _timedcpu_seconds(lambda: depth.run(depth_in, depth.output_names), max(1, reps // 2)),
        "(old path) maps back to frame size": _timedcpu_seconds(lambda: ([_restore(v, plan, nearest=(k == "labels"))
                                                        for k, v in seg_out.items()],
                                                       _restore(next(iter(depth_out.values())), dplan, False)), reps),
        "(old path) EEM + regions at frame size": _timedcpu_seconds(lambda: score_frame(
            maps["labels"][0], maps["ebu"][0], maps["cam"][0], inv[0], EEMOptions(), with_regions=True), reps),
        # the service's path: the maths at the model's size, regions to the frame
        "EEM + regions at input size, regions to frame": _timedcpu_seconds(lambda: score_frame(
            seg_out["labels"][0], seg_out["ebu"][0], seg_out["cam"][0], next(iter(depth_out.values()))[0],
            EEMOptions(), with_regions=True, frame_hw=image.shape[1:3]), reps),
    }


def _drive(n_threads: int, items: list, fn) -> float:
    """n threads call fn(item) over the items; returns wall seconds."""
    it = iter(items)
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            try:
                fn(item)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return
    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed, first: {errors[0]!r}")
    return time.perf_counter() - t0


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16, help="frames scored per side, per round, per format")
    p.add_argument("--distinct", type=int, default=6, help="distinct scenes rendered (cycled)")
    p.add_argument("--size", default="256x512", help="the models' input size HxW")
    p.add_argument("--concurrency", type=int, default=4, help="in-process threads (the EEM service's default)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--workdir", default=None, help="keep frames, models and logs here (reused)")
    p.add_argument("--stages-only", action="store_true", help="decoders and stages, no end-to-end run")
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    folder = Path(a.workdir or tempfile.mkdtemp(prefix="rank_throughput_"))
    folder.mkdir(parents=True, exist_ok=True)

    from segxal.storage import local_uri
    from services.common.model_repository import spec_from_config
    from services.eem.api import ScoreOptions
    from services.eem.client import EemClient
    from services.inference.batcher import Batcher
    from services.inference.client import _prepare_images
    from services.inference.config import RuntimeConfig
    from services.inference.model_manager import batch_policy
    from services.inference.runtime import OnnxModel

    t0 = time.perf_counter()
    frames = _frames(folder, a.distinct)
    repo = _export(folder, h, w)
    print(f"frames and models ready in {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f}", flush=True)
    models = {n: OnnxModel(repo.model_file(n, 1), repo.read_config(n), RuntimeConfig()) for n in ("segmentation", "depth")}
    specs = {n: spec_from_config(m.config) for n, m in models.items()}
    formats = a.formats.split(",")

    print("\ndecoders, CPU ms per frame (pixels identical to Pillow's?):", flush=True)
    for fmt in formats:
        row = _decoders(frames[fmt][:3], reps=3)
        print(f"  {fmt}: " + ", ".join(f"{k} {v['cpu_ms']:.1f}{'' if v['same'] else ' (DIFFERENT)'}"
                                      for k, v in row.items()) + f" | load {os.getloadavg()[0]:.1f}", flush=True)

    print("\nstages, CPU ms per frame, one frame at a time in this process:", flush=True)
    stage_rows = {fmt: _stages(frames[fmt], models["segmentation"], models["depth"], specs["segmentation"],
                               specs["depth"], reps=3) for fmt in formats}
    for step in stage_rows[formats[0]]:
        print(f"  {step:<34}" + "".join(f"{stage_rows[f][step]:>10.1f} ({f})" for f in formats))
    print(f"  load {os.getloadavg()[0]:.1f}", flush=True)

    if a.stages_only:
        return 0
    inf_port, eem_port = _free_port(), _free_port()
    inference = _start([sys.executable, "-m", "services.inference.main", "--repo", str(repo.root), "--host", "127.0.0.1",
                        "--port", str(inf_port), "--poll-interval", "0", "--log-level", "WARNING"],
                       folder / "inference.log")
    roots = sorted({str(f.parent.parent.parent) for f in frames["png-1024x2048"]} | {str(folder / "jpeg")})
    eem = _start([sys.executable, "-m", "services.eem.main", "--seg-target", f"127.0.0.1:{inf_port}", "--host",
                  "127.0.0.1", "--port", str(eem_port), *[x for r in roots for x in ("--storage-root", r)]],
                 folder / "eem.log")
    procs = [psutil.Process(), psutil.Process(inference.pid), psutil.Process(eem.pid)]
    results = {}
    try:
        with EemClient(f"127.0.0.1:{eem_port}", timeout_s=600) as client:
            client.wait_until_serving(300)
            options = ScoreOptions(regions=True)
            regions = []

            def through_eem(files):
                refs = [(f"f{i}", local_uri(files[i % len(files)])) for i in range(a.frames)]
                for r in client.score_stream(refs, options):
                    if r.error is not None:
                        raise RuntimeError(f"{r.uri}: {r.error}")
                    regions.append(len(r.regions))

            for fmt in formats:
                files = frames[fmt]
                through_eem(files[:2])  # warm-up: connections, specs, sessions
                resized = [_prepare_images(specs["segmentation"], np.asarray(_read(f))[None])[0] for f in files]
                depth_in = [_prepare_images(specs["depth"], np.asarray(_read(f))[None])[0] for f in files]
                batchers = {n: Batcher(m.run, m.output_names, batch_policy(m.config, m.parallel_runs), f"bench/{n}")
                            for n, m in models.items()}

                def forwards(i):
                    batchers["segmentation"].submit(resized[i % len(files)], None, 1, None)
                    batchers["depth"].submit(depth_in[i % len(files)], None, 1, None)
                acc = {"eem": [0.0, 0.0, 0], "in-process": [0.0, 0.0, 0]}
                loads = []
                for _ in range(a.rounds):
                    for side in ("eem", "in-process"):
                        loads.append(os.getloadavg()[0])
                        c0 = cpu_seconds(procs if side == "eem" else procs[:1])
                        wall = (_drive(1, [files], through_eem) if side == "eem"
                                else _drive(a.concurrency, list(range(a.frames)), forwards))
                        acc[side][0] += wall
                        acc[side][1] += cpu_seconds(procs if side == "eem" else procs[:1]) - c0
                        acc[side][2] += a.frames
                for b in batchers.values():
                    b.close()
                results[fmt] = dict(acc=acc, load=float(np.mean(loads)), regions=float(np.mean(regions)))
                print(f"  {fmt} done (load {results[fmt]['load']:.1f})", flush=True)
    finally:
        for proc in (eem, inference):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"\nend to end (EEM service + inference server, regions on, EEM default concurrency) vs in-process "
          f"ONNX Runtime (two forwards at {h}x{w}, {a.concurrency} threads); {a.rounds} x {a.frames} frames per "
          f"side; {os.cpu_count()} cores: a load above that means the machine was shared.")
    print(f"{'frames':>16} | {'e2e f/s':>8} | {'in-proc f/s':>11} | {'ratio':>5} | {'CPU ms/f e2e':>12} | "
          f"{'in-proc':>8} | {'CPU ratio':>9} | {'regions/f':>9} | load")
    for fmt, r in results.items():
        e, i = r["acc"]["eem"], r["acc"]["in-process"]
        fe, fi = e[2] / e[0], i[2] / i[0]
        ce, ci = e[1] / e[2] * 1e3, i[1] / i[2] * 1e3
        print(f"{fmt:>16} | {fe:>8.3f} | {fi:>11.3f} | {fe / fi:>5.3f} | {ce:>12.0f} | {ci:>8.0f} | "
              f"{ci / ce:>9.3f} | {r['regions']:>9.1f} | {r['load']:.1f}")
    return 0


def _read(path: Path) -> np.ndarray:
    from segxal import imageio
    return imageio.decode_image(path.read_bytes())


if __name__ == "__main__":
    raise SystemExit(main())
