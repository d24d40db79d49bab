"""Coordinator lease + submit throughput: SQLite (1 replica), PostgreSQL x 1 and PostgreSQL x 3
replicas, side by side in one run.

    .venv/bin/python bench/coordinator.py [--tasks 600] [--labelers 16] [--batch 1] [--size 32x64]

Each setting gets a fresh database (SQLite file / PostgreSQL schema), its replicas as separate
processes (python -m services.coordinator.main), a pool of --tasks frames in one ranked random
cycle, then --labelers client threads in this process, each bound to one replica, that lease
--batch tasks at a time and submit a whole-frame trainId PNG for each until none is left. The
rate is (tasks leased + annotations submitted) / wall time; latencies are per call.
Masks are small (--size) so the numbers measure coordination (SQL, gRPC, durable commits), not
PNG decoding. Every submit is a durable commit (SQLite synchronous=FULL, PostgreSQL default
synchronous_commit=on). On a shared 2-core machine the client threads, the replicas and
PostgreSQL share the same cores: read the numbers as relative.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from segxal import imageio
from services.coordinator.client import CoordinatorClient, image_folder_source

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"coordinator listening on (\S+)")


def _start_replica(db_url: str, storage: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "services.coordinator.main", "--db", db_url,
                             "--storage", str(storage), "--port", "0", "--grace-s", "1"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=open(log, "ab"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        m = _LISTENING.search(line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"replica did not start; see {log}")


def _percentile_ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")


def _run_setting(name: str, db_url: str, replicas: int, args, work: Path) -> dict:
    storage = work / f"storage-{name}"
    procs = [_start_replica(db_url, storage, work / f"{name}-{i}.log") for i in range(replicas)]
    try:
        with CoordinatorClient(procs[0][1], client_id="setup", timeout_s=120) as setup:
            pool = setup.create_pool(f"bench-{name}")
            setup.ingest(pool.pool_id, [image_folder_source(str(work / "frames"))])
            cycle = setup.start_cycle(pool.pool_id, args.tasks, selection="random")
            assert len(setup.rank_cycle(cycle.cycle_id).tasks) == args.tasks
        lease_s: list[float] = []
        submit_s: list[float] = []
        leased = [0]
        errors: list[str] = []
        h, w = args.hw
        labels = np.zeros((h, w), np.uint8)
        labels[: h // 2] = 10  # sky over road

        def labeler(i: int) -> None:
            target = procs[i % replicas][1]
            try:
                with CoordinatorClient(target, client_id=f"labeler-{i}", timeout_s=60) as client:
                    while True:
                        t0 = time.perf_counter()
                        tasks = client.lease(pool.pool_id, max_tasks=args.batch, lease_seconds=600)
                        lease_s.append(time.perf_counter() - t0)
                        if not tasks:
                            return
                        leased[0] += len(tasks)
                        for task in tasks:
                            t0 = time.perf_counter()
                            client.submit(task, labels)
                            submit_s.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"labeler-{i}: {e}")

        threads = [threading.Thread(target=labeler, args=(i,)) for i in range(args.labelers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise RuntimeError(f"{name}: {len(errors)} labelers failed, first: {errors[0]}")
        with CoordinatorClient(procs[-1][1], timeout_s=60) as check:
            report = check.cycle_report(cycle.cycle_id)
            assert report.tasks_done == args.tasks, report
        return {"name": name, "replicas": replicas, "wall_s": wall,
                "ops_per_s": (leased[0] + len(submit_s)) / wall, "tasks_per_s": len(submit_s) / wall,
                "lease_p50": _percentile_ms(lease_s, 50), "lease_p95": _percentile_ms(lease_s, 95),
                "submit_p50": _percentile_ms(submit_s, 50), "submit_p95": _percentile_ms(submit_s, 95)}
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--labelers", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="tasks per lease call")
    p.add_argument("--size", default="32x64", help="frame / mask size HxW")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                   help="PostgreSQL database (a fresh schema is made in it and dropped)")
    args = p.parse_args(argv)
    args.hw = tuple(int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-coordinator-"))
    rng = np.random.default_rng(0)
    for i in range(args.tasks):
        imageio.write_png(work / "frames" / f"f{i:05d}.png", rng.integers(0, 256, (*args.hw, 3), dtype=np.uint8))
    schemas: list[str] = []

    def pg_url() -> str:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return f"{args.pg}?options=-csearch_path%3D{schema}"

    rows = []
    try:
        rows.append(_run_setting("sqlite", f"sqlite://{work / 'bench.db'}", 1, args, work))
        rows.append(_run_setting("postgres-x1", pg_url(), 1, args, work))
        rows.append(_run_setting("postgres-x3", pg_url(), 3, args, work))
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            for s in schemas:
                conn.execute(f"DROP SCHEMA {s} CASCADE")
        shutil.rmtree(work, ignore_errors=True)
    print(f"coordinator lease+submit: {args.tasks} tasks, {args.labelers} labeler threads, "
          f"{args.batch} task(s) per lease, {args.size} masks")
    print(f"{'setting':<13} {'replicas':>8} {'wall s':>7} {'lease+submit/s':>15} {'tasks/s':>8} "
          f"{'lease p50/p95 ms':>17} {'submit p50/p95 ms':>18}")
    for r in rows:
        print(f"{r['name']:<13} {r['replicas']:>8} {r['wall_s']:>7.2f} {r['ops_per_s']:>15.1f} "
              f"{r['tasks_per_s']:>8.1f} {r['lease_p50']:>8.1f}/{r['lease_p95']:<8.1f} "
              f"{r['submit_p50']:>9.1f}/{r['submit_p95']:<8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
