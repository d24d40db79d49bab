"""Inference server overhead: in-process ONNX Runtime vs the same model through the server.

    .venv/bin/python bench/infer_overhead.py [--size 256x512] [--concurrency 1,4,8] [--seconds 8]

One default-size U-Net (width 32, depth 4, random weights: speed does not depend on them) is
exported with its extra outputs (labels uint8; ebu, cam, pmax float16) and published to a
temporary model repository. For each concurrency N, N threads each send one uint8 frame at a
time, as fast as answers come back:
- in process: services.inference.runtime.OnnxModel + services.inference.batcher.Batcher in this
  process, with the server's ONNX Runtime thread settings and the config's batch policy (the
  server minus gRPC);
- server: `python -m services.inference.main` in its own process, N tritonclient sync clients.
The two sides alternate (--rounds times) so that other load on a shared machine hits both alike;
frames/s is the total over rounds, latencies are pooled; CPU ms/frame counts every process involved
(robust to neighbours on a shared machine, unlike frames/s). Then a per-frame cost of the protocol
codec (encode/serialize/parse on both ends) for one frame, to show where the difference goes.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export(folder: Path, h: int, w: int, max_batch: int, delay_us: int):
    import torch

    from segxal.export import ExportConfig, export_segmentation
    from segxal.models.unet import UNet
    from services.common.model_repository import BatchingConfig, ModelRepository, build_config

    torch.manual_seed(0)
    result = export_segmentation(UNet(), folder / "export" / "model.onnx",
                                 ExportConfig(trace_hw=(h, w), parity_batch=1))
    repo = ModelRepository(folder / "repo")
    config = build_config("segmentation", result.spec,
                          BatchingConfig(max_batch_size=max_batch, max_queue_delay_us=delay_us))
    repo.publish("segmentation", result.path, config)
    return result, repo


def _drive(n_threads: int, seconds: float, call) -> tuple[int, list[float], float]:
    """n threads call `call(thread index)` in a loop for `seconds`; returns (frames, latencies s, wall s)."""
    latencies: list[list[float]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []
    start_gate = threading.Barrier(n_threads + 1)
    stop_at = [0.0]

    def worker(i):
        start_gate.wait()
        own = latencies[i]
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                call(i)
            except BaseException as e:  # noqa: BLE001 - reported after the run
                errors.append(e)
                return
            own.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]!r}")
    flat = [x for own in latencies for x in own]
    return len(flat), flat, wall


def _codec_costs(frame: np.ndarray, outputs: dict[str, np.ndarray], reps: int = 30) -> dict[str, float]:
    """Milliseconds per frame for each protocol step, on one frame's real tensors."""
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc._infer_result import InferResult as TritonResult
    from tritonclient.grpc._utils import _get_inference_request

    from services.inference import protocol
    from services.inference.api import InferResult

    def timed(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        return (time.perf_counter() - t0) / reps * 1e3, out

    def client_request():
        inp = tg.InferInput("image", list(frame.shape), "UINT8")
        inp.set_data_from_numpy(frame)
        return _get_inference_request("segmentation", [inp], "", "", None, 0, False, False, 0, None, None)
    costs = {}
    costs["client: build request"], req = timed(client_request)
    costs["client: serialize request"], wire = timed(req.SerializeToString)
    costs["server: parse request"], msg = timed(lambda: pb.ModelInferRequest.FromString(wire))
    costs["server: decode tensors"], _ = timed(lambda: protocol.request_from_proto(msg, 1 << 30))
    result = InferResult("segmentation", 1, outputs)
    costs["server: encode outputs"], resp = timed(lambda: protocol.response_to_proto(result))
    costs["server: serialize response"], wire = timed(resp.SerializeToString)
    costs["client: parse response"], parsed = timed(lambda: pb.ModelInferResponse.FromString(wire))
    costs["client: as_numpy (4 outputs)"], _ = timed(
        lambda: [TritonResult(parsed).as_numpy(n) for n in outputs])
    costs["(bytes on the wire: request, response)"] = (len(req.SerializeToString()), len(wire))
    return costs


def _cpu_seconds(procs) -> float:
    """User + system CPU seconds of the processes (all their threads)."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x512", help="frame size HxW")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per side, per round")
    p.add_argument("--rounds", type=int, default=2, help="alternations in-process / server per concurrency")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = one per core)")
    p.add_argument("--spin", action="store_true", help="ONNX Runtime threads spin for work (both sides)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--workdir", default=None, help="keep the model and the server log here")
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    levels = [int(v) for v in a.concurrency.split(",")]

    import onnxruntime as ort
    import tritonclient.grpc as tg

    from services.inference.batcher import Batcher
    from services.inference.config import RuntimeConfig
    from services.inference.model_manager import batch_policy
    from services.inference.runtime import OnnxModel

    folder = Path(a.workdir or tempfile.mkdtemp(prefix="infer_overhead_"))
    t0 = time.perf_counter()
    result, repo = _export(folder, h, w, a.max_batch, a.queue_delay_us)
    print(f"export {time.perf_counter() - t0:.1f} s; parity: {result.parity.summary()}")

    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    config = repo.read_config("segmentation")
    runtime = RuntimeConfig(intra_op_threads=a.threads, spinning=a.spin)
    model = OnnxModel(repo.model_file("segmentation", 1), config, runtime)
    policy = batch_policy(model.config)
    print(f"ONNX Runtime {ort.__version__} {model.providers[0]}, intra-op threads "
          f"{a.threads or 'default'}, spinning {a.spin}, cores {os.cpu_count()}, batch policy {policy}")

    port = _free_port()
    log = open(folder / "server.log", "w")
    command = [sys.executable, "-m", "services.inference.main", "--repo", str(repo.root), "--host", "127.0.0.1",
               "--port", str(port), "--poll-interval", "0", "--intra-op-threads", str(a.threads),
               "--log-level", "WARNING"] + (["--ort-spinning"] if a.spin else [])
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    me, server_proc = psutil.Process(), psutil.Process(server.pid)
    stats_client = tg.InferenceServerClient(target)
    rows = []
    try:
        deadline = time.monotonic() + 120
        with tg.InferenceServerClient(target) as c:
            while True:
                try:
                    if c.is_model_ready("segmentation"):
                        break
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"server did not get ready, see {folder / 'server.log'}")
                time.sleep(0.2)

        for n in levels:
            batcher = Batcher(model.run, model.output_names, policy, "bench/1")
            clients = [tg.InferenceServerClient(target) for _ in range(n)]  # one channel per thread

            def in_process(i):
                batcher.submit({"image": frame}, None, 1, None)

            def through_server(i):
                inp = tg.InferInput("image", list(frame.shape), "UINT8")
                inp.set_data_from_numpy(frame)
                r = clients[i].infer("segmentation", [inp])
                for name in ("labels", "ebu", "cam", "pmax"):
                    r.as_numpy(name)

            def executions(name):  # (rows, executions) so far: the mean batch size actually formed
                if name == "in-process":
                    st = batcher.stats()
                    return st.inference_count, st.execution_count
                [st] = stats_client.get_inference_statistics("segmentation").model_stats
                return st.inference_count, st.execution_count

            # per side: frames, latencies, wall s, CPU s (this process; + the server's), rows, executions
            sides = {"in-process": [0, [], 0.0, 0.0, 0, 0], "server": [0, [], 0.0, 0.0, 0, 0]}
            _drive(n, 1.0, in_process)  # warm-up both
            _drive(n, 1.0, through_server)
            for _ in range(a.rounds):
                for name, fn in (("in-process", in_process), ("server", through_server)):
                    procs = [me] + ([server_proc] if name == "server" else [])
                    rows0, execs0 = executions(name)
                    cpu0 = _cpu_seconds(procs)
                    frames, lat, wall = _drive(n, a.seconds, fn)
                    cpu1 = _cpu_seconds(procs)
                    rows1, execs1 = executions(name)
                    side = sides[name]
                    side[0] += frames
                    side[1] += lat
                    side[2] += wall
                    side[3] += cpu1 - cpu0
                    side[4] += rows1 - rows0
                    side[5] += execs1 - execs0
            batcher.close()
            for c in clients:
                c.close()
            fps = {k: v[0] / v[2] for k, v in sides.items()}
            cpu_ms = {k: v[3] / v[0] * 1e3 for k, v in sides.items()}
            batch = {k: v[4] / max(v[5], 1) for k, v in sides.items()}
            rows.append((n, fps["in-process"], fps["server"], fps["server"] / fps["in-process"],
                         cpu_ms["in-process"], cpu_ms["server"], cpu_ms["in-process"] / cpu_ms["server"],
                         batch["in-process"], batch["server"],
                         _pct(sides["in-process"][1], 50), _pct(sides["in-process"][1], 99),
                         _pct(sides["server"][1], 50), _pct(sides["server"][1], 99)))
            print(f"  concurrency {n} done", flush=True)
    finally:
        stats_client.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"\n{h}x{w} uint8 frames, U-Net width 32 depth 4 + labels/ebu/cam/pmax, "
          f"{a.rounds} x {a.seconds:.0f} s per side, load average {os.getloadavg()[0]:.1f}")
    print("CPU ms/frame: CPU time of every process involved (this one; + the server's) per frame, so the")
    print("CPU ratio (in-proc / server) is the throughput ratio a dedicated CPU-bound machine would see,")
    print("whatever else runs on this one.")
    print(f"{'conc':>4} | {'in-proc f/s':>11} | {'server f/s':>10} | {'ratio':>5} | {'CPU ms/frame in/srv':>19} | "
          f"{'CPU ratio':>9} | {'batch in/srv':>12} | {'in-proc p50/p99 ms':>18} | {'server p50/p99 ms':>17}")
    print("-" * 132)
    for n, fi, fs, ratio, ci, cs, cratio, bi, bs, i50, i99, s50, s99 in rows:
        print(f"{n:>4} | {fi:>11.2f} | {fs:>10.2f} | {ratio:>5.3f} | {ci:>8.1f} / {cs:<8.1f} | {cratio:>9.3f} | "
              f"{bi:>5.2f} / {bs:<4.2f} | {i50:>8.1f} / {i99:<7.1f} | {s50:>7.1f} / {s99:<7.1f}")

    outputs = dict(zip(model.output_names, model.run({"image": frame}, model.output_names).values()))
    print("\nprotocol cost per frame (ms), one frame's real tensors:")
    for step, cost in _codec_costs(frame, outputs).items():
        print(f"  {step:<40} {cost if isinstance(cost, tuple) else f'{cost:.3f}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
