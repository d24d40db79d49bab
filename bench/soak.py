"""Soak: the stack under steady load for N minutes, with model versions published and a
coordinator replica killed at intervals.

    nice -n 10 .venv/bin/python bench/soak.py --minutes 10 [--db postgresql://...] [--out soak.json]

What runs (each its own process, on 127.0.0.1): one inference server (`services.inference.main`,
polling the repository every second) serving a U-Net (width 16, depth 4: `segxal up`'s default)
and the depth network; the EEM service on it; two coordinator replicas (`services.coordinator.main`)
on one database (PostgreSQL when reachable, each run in a fresh schema; else one SQLite file).
The load, from this process: 2 threads of segmentation inference (128 x 256 frames, the project's
inference client), 1 thread of EEM scoring (frames by URI), 2 labelers on both replicas
(round_robin over "A,B") doing lease -> heartbeat -> release, or submit one time in eight.

Disturbances: every --reload-every s a new version of both models is published (two weight sets,
alternating); every --kill-every s (offset by half a period) replica B is killed with SIGKILL and
restarted on its port. A request is "during reload" if it started between a publication and 2 s
after both models answered with the new version, "during failover" if it started between a
kill and 2 s after the restarted replica was SERVING, else "steady".

A failed request is one that failed after the client's retries: labelers retry UNAVAILABLE up to
5 times (0.2 s apart; submits carry an idempotency key, so a retry is safe), inference and EEM
calls are not retried. Retries are counted and printed.

Prints, per workload: requests served, failed, retried; p50/p99 (ms) steady, during reloads,
during failover; and RSS (MB) of each service process at start, after warm-up (--warmup-s) and
at the end (growth after warm-up; targets: 0 failed, growth <= 10 %, p99 during reloads <= 2 x
steady). The machine's loadavg is printed at start and end: on a shared machine the absolute
latencies say as much about the neighbours as about the stack.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from segxal import imageio  # noqa: E402
from segxal.errors import NotReady, SegxalError  # noqa: E402

PG_URL = os.environ.get("SEGXAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FRAME_HW = (128, 256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def _loadavg() -> str:
    return open("/proc/loadavg").read().strip()


# ---------------------------------------------------------------- processes

@dataclass
class Proc:
    name: str
    argv: list[str]
    port: int
    log: Path
    popen: subprocess.Popen | None = None
    started_at: float = 0.0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.popen = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=env, stdout=open(self.log, "ab"),
                                      stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        from services.common.channel import make_channel
        from services.common.health import is_serving

        deadline = time.monotonic() + timeout_s
        with make_channel(self.target) as ch:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
                try:
                    if is_serving(ch, "", timeout_s=2.0):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"{self.name} not serving after {timeout_s} s")

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


# ---------------------------------------------------------------- set-up

def _export(folder: Path):
    import torch

    from segxal.export import ExportConfig, export_depth, export_segmentation
    from segxal.models.depth import DepthConfig, DepthNet
    from segxal.models.unet import UNet, UNetConfig

    cfg = ExportConfig(trace_hw=FRAME_HW, parity_batch=1)
    seg, dep = [], []
    for s in (0, 1):
        torch.manual_seed(s)
        seg.append(export_segmentation(UNet(UNetConfig(width=16, depth=4)).eval(),
                                       folder / f"seg{s}" / "model.onnx", cfg))
        torch.manual_seed(s)
        dep.append(export_depth(DepthNet(DepthConfig()).eval(), folder / f"depth{s}" / "model.onnx", cfg))
    return seg, dep


def _database(work: Path, url: str) -> tuple[str, callable]:
    """(url, cleanup): a fresh PostgreSQL schema when reachable, else a SQLite file."""
    if url != "sqlite":
        try:
            import psycopg

            schema = f"soak_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")

            def drop():
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
            return f"{url}?options=-csearch_path%3D{schema}", drop
        except Exception as e:  # noqa: BLE001
            print(f"PostgreSQL not reachable ({e}); replicas share one SQLite file", flush=True)
    return f"sqlite://{work / 'coordinator.db'}", lambda: None


# ---------------------------------------------------------------- measurements

class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.samples: dict[str, list[tuple[float, float]]] = defaultdict(list)  # kind -> (start, ms)
        self.failed: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.retries: dict[str, int] = defaultdict(int)
        self.windows: dict[str, list[list[float]]] = {"reload": [], "failover": []}

    def ok(self, kind: str, start: float) -> None:
        with self.lock:
            self.samples[kind].append((start, (time.monotonic() - start) * 1e3))

    def fail(self, kind: str, start: float, error: BaseException) -> None:
        with self.lock:
            self.failed[kind].append((start, f"{type(error).__name__}: {str(error)[:200]}"))

    def retried(self, kind: str) -> None:
        with self.lock:
            self.retries[kind] += 1

    def phase(self, t: float) -> str:
        for name in ("failover", "reload"):
            for begin, end in self.windows[name]:
                if begin <= t <= end:
                    return name
        return "steady"


def _retrying(rec: Recorder, kind: str, call, attempts: int = 5):
    for i in range(attempts):
        try:
            return call()
        except NotReady:
            if i == attempts - 1:
                raise
            rec.retried(kind)
            time.sleep(0.2)


def _infer_loop(rec: Recorder, target: str, stop: threading.Event, seed: int) -> None:
    from services.inference.client import InferenceClient

    image = np.random.default_rng(seed).integers(0, 256, (1, *FRAME_HW, 3), dtype=np.uint8)
    with InferenceClient(target, timeout_s=30) as client:
        while not stop.is_set():
            t = time.monotonic()
            try:
                client.infer_segmentation(image)
                rec.ok("inference", t)
            except SegxalError as e:
                rec.fail("inference", t, e)


def _eem_loop(rec: Recorder, target: str, frames: list[Path], stop: threading.Event) -> None:
    from services.eem.client import EemClient

    with EemClient(target, timeout_s=30) as client:
        k = 0
        while not stop.is_set():
            t = time.monotonic()
            try:
                client.score(str(frames[k % len(frames)]))
                rec.ok("eem", t)
            except SegxalError as e:
                rec.fail("eem", t, e)
            k += 1


def _labeler_loop(rec: Recorder, target: str, pool_id: str, who: str, stop: threading.Event) -> None:
    from services.coordinator.client import CoordinatorClient

    with CoordinatorClient(target, client_id=who, timeout_s=30) as client:
        n = 0
        while not stop.is_set():
            t = time.monotonic()
            try:
                tasks = _retrying(rec, "coordinator", lambda: client.lease(pool_id, lease_seconds=30))
                rec.ok("coordinator", t)
                if not tasks:
                    time.sleep(0.5)
                    continue
                task = tasks[0]
                t = time.monotonic()
                _retrying(rec, "coordinator", lambda: client.heartbeat(task, lease_seconds=30))
                rec.ok("coordinator", t)
                t = time.monotonic()
                n += 1
                if n % 8 == 0:
                    labels = np.full((task.height, task.width), n % 19, np.uint8)
                    key = f"{who}-{task.task_id}"
                    _retrying(rec, "coordinator", lambda: client.submit(task, labels, idempotency_key=key))
                else:
                    _retrying(rec, "coordinator", lambda: client.release(task))
                rec.ok("coordinator", t)
            except SegxalError as e:
                rec.fail("coordinator", t, e)
            time.sleep(0.1)  # a person's pace, roughly; keeps the shared machine usable


# ---------------------------------------------------------------- the run

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--reload-every", type=float, default=60.0, help="seconds between model publications")
    p.add_argument("--kill-every", type=float, default=90.0, help="seconds between kills of replica B")
    p.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured from here")
    p.add_argument("--db", default=PG_URL, help="PostgreSQL URL, or 'sqlite'")
    p.add_argument("--frames", type=int, default=1500, help="frames in the coordinator's pool")
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    a = p.parse_args(argv)

    from services.common.model_repository import ModelRepository, build_config
    from services.coordinator.client import CoordinatorClient, image_folder_source
    from services.inference.client import InferenceClient

    print(f"loadavg at start: {_loadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="segxal-soak-"))
    seg, dep = _export(work / "export")
    repo = ModelRepository(work / "repo")
    seg_cfg, dep_cfg = build_config("segmentation", seg[0].spec), build_config("depth", dep[0].spec)
    repo.publish("segmentation", seg[0].path, seg_cfg)
    repo.publish("depth", dep[0].path, dep_cfg)
    rng = np.random.default_rng(0)
    eem_frames = []
    for i in range(20):
        path = work / "frames" / f"eem_{i:03d}.png"
        imageio.write_png(path, rng.integers(0, 256, (*FRAME_HW, 3), dtype=np.uint8))
        eem_frames.append(path)
    for i in range(a.frames):
        imageio.write_png(work / "pool" / f"f_{i:05d}.png", rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    db_url, drop_db = _database(work, a.db)
    py = sys.executable
    inf = Proc("inference", [py, "-m", "services.inference.main", "--repo", str(repo.root), "--host", "127.0.0.1",
                             "--port", "0", "--poll-interval", "1", "--intra-op-threads", "1"], 0, work / "inference.log")
    inf.port = _free_port()
    inf.argv[inf.argv.index("--port") + 1] = str(inf.port)
    eem = Proc("eem", [py, "-m", "services.eem.main", "--seg-target", inf.target, "--depth-target", inf.target,
                       "--storage-root", str(work / "frames"), "--host", "127.0.0.1", "--port", str(_free_port())],
               0, work / "eem.log")
    eem.port = int(eem.argv[-1])
    coords = []
    for name in ("coordinator-A", "coordinator-B"):
        port = _free_port()
        coords.append(Proc(name, [py, "-m", "services.coordinator.main", "--db", db_url, "--storage",
                                  str(work / "storage"), "--host", "127.0.0.1", "--port", str(port),
                                  "--eem-target", eem.target, "--ingest-root", str(work / "pool"),
                                  "--grace-s", "1", "--db-pool-size", "4"], port, work / f"{name}.log"))
    procs = [inf, eem, *coords]
    rec = Recorder()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    rss: dict[str, dict[str, float]] = defaultdict(dict)
    try:
        inf.start()
        inf.wait_serving()
        eem.start()
        coords[0].start()
        coords[0].wait_serving()  # runs the migrations alone
        coords[1].start()
        for proc in (eem, coords[1]):
            proc.wait_serving()
        both = ",".join(c.target for c in coords)
        with CoordinatorClient(coords[0].target, client_id="soak-setup", timeout_s=600) as setup:
            pool = setup.create_pool("soak")
            setup.ingest(pool.pool_id, [image_folder_source(str(work / "pool"))])
            cycle = setup.start_cycle(pool.pool_id, a.frames, selection="random", random_seed=1)
            setup.rank_cycle(cycle.cycle_id)
        for proc in procs:
            rss[proc.name]["start"] = _rss_mb(proc.popen.pid)
        t0 = time.monotonic()
        for i in range(2):
            threads.append(threading.Thread(target=_infer_loop, args=(rec, inf.target, stop, i), daemon=True))
            threads.append(threading.Thread(target=_labeler_loop, args=(rec, both, pool.pool_id, f"labeler-{i}", stop),
                                            daemon=True))
        threads.append(threading.Thread(target=_eem_loop, args=(rec, eem.target, eem_frames, stop), daemon=True))
        for t in threads:
            t.start()
        end = t0 + a.minutes * 60
        next_reload, next_kill, version = t0 + a.reload_every, t0 + a.reload_every / 2 + a.kill_every / 2, 1
        warm_done = False
        next_sample, series = t0, defaultdict(list)  # RSS every 30 s: is growth a climb or a plateau?
        with InferenceClient(inf.target, timeout_s=30) as probe:
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    for proc in procs:
                        series[proc.name].append((round(now - t0), round(_rss_mb(proc.popen.pid))))
                    next_sample += 30.0
                if not warm_done and now - t0 >= a.warmup_s:
                    for proc in procs:
                        rss[proc.name]["after_warmup"] = _rss_mb(proc.popen.pid)
                    warm_done = True
                if now >= next_reload:
                    version += 1
                    window = [now, float("inf")]
                    rec.windows["reload"].append(window)
                    repo.publish("segmentation", seg[version % 2].path, seg_cfg)
                    repo.publish("depth", dep[version % 2].path, dep_cfg)
                    deadline = now + 120
                    while time.monotonic() < deadline and not (
                            probe.is_ready("segmentation", str(version)) and probe.is_ready("depth", str(version))):
                        time.sleep(0.1)
                    window[1] = time.monotonic() + 2.0
                    print(f"[{now - t0:6.0f} s] published version {version}: served after "
                          f"{window[1] - 2.0 - now:.1f} s", flush=True)
                    next_reload += a.reload_every
                elif now >= next_kill:
                    b = coords[1]
                    window = [now, float("inf")]
                    rec.windows["failover"].append(window)
                    b.kill()
                    time.sleep(2.0)
                    b.start()
                    b.wait_serving()
                    window[1] = time.monotonic() + 2.0
                    print(f"[{now - t0:6.0f} s] killed {b.name} (SIGKILL); serving again after "
                          f"{window[1] - 2.0 - now:.1f} s", flush=True)
                    next_kill += a.kill_every
                else:
                    time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(60)
        for proc in procs:
            rss[proc.name]["end"] = _rss_mb(proc.popen.pid)
            rss[proc.name]["restarted"] = proc is coords[1] and bool(rec.windows["failover"])
            rss[proc.name]["series_s_mb"] = series[proc.name]
    finally:
        stop.set()
        for proc in reversed(procs):
            proc.stop()
        drop_db()
    report = _report(rec, rss, a, time.monotonic() - t0)
    print(f"loadavg at end: {_loadavg()}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"work folder (logs): {work}")
    return 0


def _report(rec: Recorder, rss: dict, a, elapsed: float) -> dict:
    out = {"minutes": elapsed / 60, "reloads": len(rec.windows["reload"]), "kills": len(rec.windows["failover"]),
           "loadavg_end": _loadavg(), "workloads": {}, "rss_mb": rss}
    print(f"\nsoak: {elapsed / 60:.1f} min, {out['reloads']} model publications, {out['kills']} replica kills")
    print(f"{'workload':12s} {'served':>7s} {'failed':>7s} {'retried':>8s}   p50/p99 ms: "
          f"{'steady':>13s} {'reload':>13s} {'failover':>13s}   p99 reload/steady")
    for kind in ("inference", "eem", "coordinator"):
        by_phase = defaultdict(list)
        for start, ms in rec.samples[kind]:
            by_phase[rec.phase(start)].append(ms)
        row = {"served": len(rec.samples[kind]), "failed": len(rec.failed[kind]),
               "retried": rec.retries[kind], "failures": rec.failed[kind][:10]}
        cells = []
        for phase in ("steady", "reload", "failover"):
            lat = np.asarray(by_phase[phase])
            p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat.size else (np.nan,) * 2
            row[phase] = {"n": int(lat.size), "p50_ms": p50, "p99_ms": p99}
            cells.append(f"{p50:5.0f}/{p99:6.0f}" if lat.size else f"{'-':>12s}")
        ratio = row["reload"]["p99_ms"] / row["steady"]["p99_ms"] if row["steady"]["n"] and row["reload"]["n"] else np.nan
        row["p99_reload_over_steady"] = ratio
        out["workloads"][kind] = row
        print(f"{kind:12s} {row['served']:7d} {row['failed']:7d} {row['retried']:8d}   "
              f"{cells[0]:>13s} {cells[1]:>13s} {cells[2]:>13s}   {ratio:5.2f}")
        for start, err in rec.failed[kind][:5]:
            print(f"    failed ({rec.phase(start)}): {err}")
    print(f"\n{'process':15s} {'RSS start':>10s} {'warm-up':>8s} {'end':>8s} {'growth after warm-up':>21s}")
    for name, r in rss.items():
        growth = (r["end"] / r["after_warmup"] - 1) * 100 if r.get("after_warmup") else np.nan
        r["growth_after_warmup_pct"] = growth
        note = "  (restarted by the kills: end is its last incarnation)" if r.get("restarted") else ""
        print(f"{name:15s} {r['start']:10.0f} {r.get('after_warmup', np.nan):8.0f} {r['end']:8.0f} {growth:20.1f}%{note}")
    for name, r in rss.items():
        print(f"RSS of {name} every 30 s (MB): {' '.join(str(mb) for _, mb in r.get('series_s_mb', []))}")
    return out


if __name__ == "__main__":
    sys.exit(main())
