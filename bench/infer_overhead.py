"""Inference serving overhead, side by side on one exported model: in-process ONNX Runtime, the
project's server, a naive KServe v2 server and a real Triton Inference Server.

    .venv/bin/python bench/infer_overhead.py [--size 256x512] [--concurrency 1,4,8] [--seconds 6]
        [--rounds 2] [--sides in-process,server,naive,triton] [--server-variant NAME="FLAGS" ...]

One default-size U-Net (width 32, depth 4, random weights: speed does not depend on them) is
exported with its extra outputs (labels uint8; ebu, cam, pmax float16) and published to a
temporary model repository. For each concurrency N, N threads each send one uint8 frame at a
time, as fast as answers come back, to each side in turn (--rounds alternations, so that other
load on a shared machine hits every side alike):
- in-process: services.inference.runtime.OnnxModel + batcher.Batcher in this process (the server
  minus gRPC), the server's ONNX Runtime settings and the config's batch policy;
- server: `python -m services.inference.main`, N tritonclient clients (one channel each);
- naive: the ~50-line KServe v2 server below (`_serve_naive`): one ONNX Runtime session with
  default options, no batching, a gRPC thread pool; the bar a real server must beat;
- triton: tritonserver 2.51.0 (scripts/setup_triton.sh) on the same model.onnx **through its Python
  backend** (services/triton/segxal_onnxruntime: ONNX Runtime in a Python stub process, each
  request's tensors crossing shared memory), not Triton's native ONNX Runtime backend, which the
  wheel does not have. Its dynamic batching and instance settings come from the same config.pbtxt.
- NAME (--server-variant): the project's server again, with extra flags (an A/B of a server setting
  in the same alternation, e.g. nospin="--no-ort-spinning").
Each round runs the sides in turn, in reverse order every other round. frames/s is the total over
rounds; each ratio is printed with +- two standard errors of the mean of its per-round ratios and
their min-max (on a shared 2-core VM rounds move +-10 %: a difference inside that is not a result).
Latencies are pooled (p99 includes each round's start). CPU ms/frame counts every process involved
(this one + the server's, Triton's stubs included), which is robust to neighbours on a shared
machine, unlike frames/s. The load average is printed beside each concurrency.
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
from cpu_time import cpu_seconds  # bench/ is on sys.path when a bench runs as a script

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


# ---------------------------------------------------------------- the naive server (the bar)

def _serve_naive(model_path: str, port: int) -> None:
    """A minimal KServe v2 server: one ONNX Runtime session with default options (threads, spinning),
    no batching, no checks, a gRPC thread pool. What a user writes in an afternoon."""
    from concurrent import futures

    import grpc
    import onnxruntime as ort
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    from segxal.modelspec import datatype_of, numpy_dtype

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            return pb.ServerLiveResponse(live=True)

        def ModelReady(self, request, context):
            return pb.ModelReadyResponse(ready=True)

        def ModelInfer(self, request, context):
            feeds = {t.name: np.frombuffer(raw, numpy_dtype(t.datatype)).reshape(list(t.shape))
                     for t, raw in zip(request.inputs, request.raw_input_contents)}
            wanted = [o.name for o in request.outputs] or names
            response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
            for name, value in zip(wanted, session.run(wanted, feeds)):
                response.outputs.add(name=name, datatype=datatype_of(value.dtype), shape=list(value.shape))
                response.raw_output_contents.append(value.tobytes())
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", 1 << 28),
                                  ("grpc.max_send_message_length", 1 << 28)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


# ---------------------------------------------------------------- sides



def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3 if values else float("nan")


def _wait_ready(target: str, proc, log: Path, model: str = "segmentation", timeout_s: float = 180.0) -> None:
    import tritonclient.grpc as tg
    deadline = time.monotonic() + timeout_s
    with tg.InferenceServerClient(target) as c:
        while True:
            try:
                if c.is_model_ready(model):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(f"{target} did not get ready, see {log}")
            time.sleep(0.2)


class _RemoteSide:
    """A KServe v2 server in another process, driven by N tritonclient sync clients."""

    def __init__(self, name: str, target: str, procs: list, stats: bool):
        self.name, self.target, self.procs, self.has_stats = name, target, procs, stats
        self.clients: list = []

    def open(self, n: int) -> None:
        import tritonclient.grpc as tg
        self.clients = [tg.InferenceServerClient(self.target) for _ in range(n)]  # one channel per thread

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def call(self, i: int, frame: np.ndarray) -> None:
        import tritonclient.grpc as tg
        inp = tg.InferInput("image", list(frame.shape), "UINT8")
        inp.set_data_from_numpy(frame)
        r = self.clients[i].infer("segmentation", [inp])
        for name in ("labels", "ebu", "cam", "pmax"):
            r.as_numpy(name)

    def executions(self) -> tuple[int, int]:
        """(rows, executions) so far: the mean batch size actually formed; (0, 0) without statistics."""
        if not self.has_stats:
            return 0, 0
        [st] = self.clients[0].get_inference_statistics("segmentation").model_stats
        return st.inference_count, st.execution_count


class _InProcessSide:
    def __init__(self, model, policy):
        from services.inference.batcher import Batcher
        self.name, self.procs, self.has_stats = "in-process", [psutil.Process()], True
        self._make = lambda: Batcher(model.run, model.output_names, policy, "bench/1")
        self.batcher = None

    def open(self, n: int) -> None:
        self.batcher = self._make()

    def close(self) -> None:
        self.batcher.close()

    def call(self, i: int, frame: np.ndarray) -> None:
        self.batcher.submit({"image": frame}, None, 1, None)

    def executions(self) -> tuple[int, int]:
        st = self.batcher.stats()
        return st.inference_count, st.execution_count


def _start(command: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    from services.inference.config import RuntimeConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x512", help="frame size HxW")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per side, per round")
    p.add_argument("--rounds", type=int, default=2, help="alternations of all sides per concurrency")
    p.add_argument("--sides", default="in-process,server,naive,triton")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = the server's default)")
    p.add_argument("--parallel-runs", type=int, default=0,
                   help="batches executing at once on CPU (server, in-process); 0 = the server's default")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=RuntimeConfig.spinning,
                   help="ONNX Runtime threads spin between the parallel sections of a run (server, in-process; "
                        "default: the server's)")
    p.add_argument("--server-variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="one more side: the project's server with these extra flags, e.g. "
                        "\"nospin=--no-ort-spinning\" (repeatable)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--workdir", default=None, help="keep the model and the server logs here")
    p.add_argument("--naive-server", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.naive_server:
        _serve_naive(a.naive_server[0], int(a.naive_server[1]))
        return 0
    h, w = (int(v) for v in a.size.lower().split("x"))
    levels = [int(v) for v in a.concurrency.split(",")]
    wanted = a.sides.split(",")

    import onnxruntime as ort

    from services.inference.model_manager import batch_policy
    from services.inference.runtime import OnnxModel

    folder = Path(a.workdir or tempfile.mkdtemp(prefix="infer_overhead_"))
    t0 = time.perf_counter()
    result, repo = _export(folder, h, w, a.max_batch, a.queue_delay_us)
    print(f"export {time.perf_counter() - t0:.1f} s; parity: {result.parity.summary()}")
    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    model_file = repo.model_file("segmentation", 1)
    model = OnnxModel(model_file, repo.read_config("segmentation"), RuntimeConfig(intra_op_threads=a.threads,
                                                                                  cpu_parallel_runs=a.parallel_runs,
                                                                                  spinning=a.spin))
    policy = batch_policy(model.config, model.parallel_runs)
    print(f"ONNX Runtime {ort.__version__} {model.providers[0]}, intra-op threads {a.threads or 'default'}, "
          f"spinning {a.spin}, cores {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), "
          f"batch policy {policy}")

    procs: list[subprocess.Popen] = []
    triton = None
    sides = []
    try:
        if "in-process" in wanted:
            sides.append(_InProcessSide(model, policy))
        servers = [("server", [])] if "server" in wanted else []
        for v in a.server_variant:
            name, _, flags = v.partition("=")
            servers.append((name, flags.split()))
        for name, flags in servers:
            port = _free_port()
            proc = _start([sys.executable, "-m", "services.inference.main", "--repo", str(repo.root), "--host",
                           "127.0.0.1", "--port", str(port), "--poll-interval", "0", "--intra-op-threads",
                           str(a.threads), "--cpu-parallel-runs", str(a.parallel_runs), "--log-level", "WARNING",
                           "--ort-spinning" if a.spin else "--no-ort-spinning", *flags],
                          folder / f"{name}.log")
            procs.append(proc)
            _wait_ready(f"127.0.0.1:{port}", proc, folder / f"{name}.log")
            sides.append(_RemoteSide(name, f"127.0.0.1:{port}", [psutil.Process(), psutil.Process(proc.pid)],
                                     stats=True))
        if "naive" in wanted:
            port = _free_port()
            proc = _start([sys.executable, str(Path(__file__).resolve()), "--naive-server", str(model_file),
                           str(port)], folder / "naive.log")
            procs.append(proc)
            _wait_ready(f"127.0.0.1:{port}", proc, folder / "naive.log")
            sides.append(_RemoteSide("naive", f"127.0.0.1:{port}", [psutil.Process(), psutil.Process(proc.pid)],
                                     stats=False))
        if "triton" in wanted:
            import shutil

            from services.common.model_repository import ModelRepository
            from services.triton.server import TritonConfig, TritonServer, find_triton
            shutil.copytree(repo.root, folder / "triton-repo")
            ModelRepository(folder / "triton-repo").set_default_flavour("python")
            triton = TritonServer(TritonConfig(repository=str(folder / "triton-repo"), control_mode="none",
                                               intra_op_threads=a.threads, ort_spinning=a.spin,
                                               workdir=str(folder / "triton")), find_triton())
            triton.start()
            tp = psutil.Process(triton.proc.pid)
            sides.append(_RemoteSide("triton", triton.target, [psutil.Process(), tp, *tp.children(recursive=True)],
                                     stats=True))
        rows = _run_levels(sides, levels, frame, a)
    finally:
        for proc in procs:
            _stop(proc)
        if triton is not None:
            triton.stop()
    _print_table(rows, [s.name for s in sides], h, w, a)
    outputs = model.run({"image": frame}, model.output_names)
    print("\nprotocol cost per frame (ms), one frame's real tensors:")
    for step, cost in _codec_costs(frame, outputs).items():
        print(f"  {step:<40} {cost if isinstance(cost, tuple) else f'{cost:.3f}'}")
    return 0


def _run_levels(sides, levels: list[int], frame: np.ndarray, a) -> list[dict]:
    rows = []
    for n in levels:
        load0 = os.getloadavg()[0]
        acc = {s.name: dict(frames=0, lat=[], wall=0.0, cpu=0.0, rows=0, execs=0, per_round=[]) for s in sides}
        for s in sides:
            s.open(n)
            _drive(n, 1.0, lambda i, s=s: s.call(i, frame))  # warm-up
        for k in range(a.rounds):
            for s in (sides if k % 2 == 0 else sides[::-1]):  # no side always first or last
                r0, e0 = s.executions()
                c0 = cpu_seconds(s.procs)
                frames, lat, wall = _drive(n, a.seconds, lambda i, s=s: s.call(i, frame))
                c1 = cpu_seconds(s.procs)
                r1, e1 = s.executions()
                x = acc[s.name]
                x["frames"] += frames
                x["lat"] += lat
                x["wall"] += wall
                x["cpu"] += c1 - c0
                x["rows"] += r1 - r0
                x["execs"] += e1 - e0
                x["per_round"].append(frames / wall)
        for s in sides:
            s.close()
        row = dict(n=n, load=(load0 + os.getloadavg()[0]) / 2)
        for name, x in acc.items():
            row[name] = dict(fps=x["frames"] / x["wall"], cpu_ms=x["cpu"] / max(x["frames"], 1) * 1e3,
                             batch=x["rows"] / x["execs"] if x["execs"] else float("nan"),
                             p50=_pct(x["lat"], 50), p99=_pct(x["lat"], 99), per_round=np.array(x["per_round"]))
        rows.append(row)
        print(f"  concurrency {n} done (load {row['load']:.1f})", flush=True)
    return rows


def _print_table(rows: list[dict], names: list[str], h: int, w: int, a) -> None:
    print(f"\n{h}x{w} uint8 frames, U-Net width 32 depth 4 + labels/ebu/cam/pmax, {a.rounds} x {a.seconds:.0f} s "
          f"per side per concurrency, sides alternating; load average during each level in the last column "
          f"({os.cpu_count()} cores: a load above that means the sides shared the cores with other work).")
    print("triton = Triton 2.51.0 running ONNX Runtime through its PYTHON backend (not its native backend).")
    print("\nframes/s (mean batch formed; p50/p99 latency ms; CPU ms per frame, all processes involved)")
    for row in rows:
        cells = []
        for name in names:
            r = row[name]
            batch = "" if r["batch"] != r["batch"] else f" b{r['batch']:.2f}"
            cells.append(f"{name} {r['fps']:.2f}{batch} ({r['p50']:.0f}/{r['p99']:.0f} ms, {r['cpu_ms']:.0f} cpu-ms)")
        print(f"  c={row['n']}: " + " | ".join(cells) + f" | load {row['load']:.1f}")
    variants = [n for n in names if n not in ("server", "naive", "in-process", "triton")]
    pairs = [(x, y) for x, y in (("server", "naive"), ("server", "in-process"), ("triton", "server"),
                                 ("naive", "in-process"), ("triton", "in-process"),
                                 *((v, y) for v in variants for y in ("server", "naive")))
             if x in names and y in names]
    print("\nratios of frames/s, pooled over the rounds, +- two standard errors of the per-round ratios' mean "
          "(min-max of the per-round ratios) [CPU-ms ratio y/x: what a dedicated CPU-bound machine would see]")
    print(f"{'conc':>4} | " + " | ".join(f"{x + ' / ' + y:>39}" for x, y in pairs) + " | load")
    for row in rows:
        cells = []
        for x, y in pairs:
            per_round = row[x]["per_round"] / row[y]["per_round"]
            half = 2 * per_round.std(ddof=1) / np.sqrt(len(per_round)) if len(per_round) > 1 else float("nan")
            cells.append(f"{row[x]['fps'] / row[y]['fps']:.3f} +-{half:.3f} ({per_round.min():.2f}-"
                         f"{per_round.max():.2f}) [{row[y]['cpu_ms'] / row[x]['cpu_ms']:.3f}]")
        print(f"{row['n']:>4} | " + " | ".join(f"{c:>39}" for c in cells) + f" | {row['load']:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
