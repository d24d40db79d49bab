"""The main job: the full active-learning loop through the real services (`segxal loop`).

    synthetic data -> depth model published -> version 1 trained by the trainer on the seed set
    -> ingest the pool (Cityscapes layout) and a drive log (MCAP)
    -> cycles of: rank (coordinator -> EEM -> inference) -> lease -> label (simulated human fixing
       the EEM regions, or the machine oracle) -> train (trainer) -> publish -> hot reload
    until DICE stopping or the budget ends; then a report: cycles.json, a table, the mIoU-vs-budget
    plot and a few frames with their EEM overlay and regions.

It takes the in-process loop's configuration (segxal.al.loop.ALConfig) and the same seed set,
depth net and training order, so the two loops can be compared cycle by cycle.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.label_studio_oracle import LabelStudioOracle, LabelStudioOracleConfig
from app.report import (cam_degenerate_share, cycle_record, rank_drive_log, render_overlays, table_row,
                        version_cam_health)
from app.stack import Stack, StackConfig
from app.terminal import Terminal, following_tasks, logs_in_file
from clients.labeling import LabelingConfig, LabelingSession, work
from clients.machine import MachineOracle, MachineOracleConfig
from clients.simulated_human import GroundTruth, SimulatedHuman, SimulatedHumanConfig
from segxal import imageio
from app.al_run import add_al_arguments, config_from_args
from segxal.al.loop import SERVICES_ORACLES, ALConfig, depth_model_for, plot_curves, seed_indices
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, NotReady
from segxal.export import ExportConfig, export_depth
from segxal.ingest.drivelog import write_drive_log
from segxal.labels import LABEL_MAP_FILE, load_label_map
from segxal.storage import FrameStorage
from segxalpb.coordinator.v1 import coordinator_pb2 as cpb
from services.common.model_repository import ModelRepository, build_config
from services.coordinator.client import CoordinatorClient
from services.eem.client import EemClient
from services.inference.client import InferenceClient
from services.trainer.api import JobRequest, JobState, PublishPolicy, TrainingOptions
from services.trainer.client import TrainerClient

log = logging.getLogger(__name__)
SEG_MODEL, DEPTH_MODEL = "segmentation", "depth"


@dataclass
class ServicesLoopConfig:
    al: ALConfig
    workdir: str = ""  # "" = <out>/services
    db: str = ""  # "" = SQLite in the workdir; postgresql://... switches the coordinator
    miou_tolerance: float = 0.05  # trainer's publish gate: refuse a version this much worse
    drive_log_frames: int = 12  # frames of the test split written to an MCAP drive log and ingested
    overlays: int = 4  # frames rendered with their EEM overlay and regions
    label_studio: LabelStudioOracleConfig = dataclasses.field(default_factory=LabelStudioOracleConfig)
    # Any segmentation model in place of the U-Net (segxal.models.external), e.g.
    # torchvision.models.segmentation.deeplabv3_mobilenet_v3_large with {"num_classes": 4, ...};
    # its classes come from the data's label_map.json (segxal.labels.LabelMap), else Cityscapes.
    model_import: str = ""
    model_kwargs: str = "{}"  # JSON object


def _copy_frame(frame, dest_root: Path, with_label: bool) -> None:
    for src, kind in ((frame.image, "leftImg8bit"), (frame.label if with_label else None, "gtFine")):
        if src is None:
            continue
        dst = dest_root / kind / "train" / frame.city / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def prepare_data(cfg: ALConfig, work: Path, drive_log_frames: int) -> dict:
    """Split the training frames like the in-process loop: the seed set (with labels) for the
    trainer, the rest (images only: the pool does not see ground truth) for the coordinator; and a
    drive log of test-split frames. Copies, so storage roots stay simple (no symlinks out)."""
    train = list_frames(cfg.data, "train", require_labels=True)
    seed = set(seed_indices(cfg, len(train)))
    root = work / "datasets"
    if root.exists():
        shutil.rmtree(root)
    for i, f in enumerate(train):
        _copy_frame(f, root / ("seed" if i in seed else "pool"), with_label=i in seed)
    if (Path(cfg.data) / LABEL_MAP_FILE).is_file():  # the seed set's ground truth keeps the data's taxonomy
        shutil.copyfile(Path(cfg.data) / LABEL_MAP_FILE, root / "seed" / LABEL_MAP_FILE)
    test = list_frames(cfg.data, "test")[:drive_log_frames]
    log_path = root / "drive_logs" / "test_drive.mcap"
    write_drive_log(log_path, ((int(1e9 * k / 10), imageio.read_rgb(f.image)) for k, f in enumerate(test)),
                    image_format="png")
    return {"seed": root / "seed", "pool": root / "pool", "drive_log": log_path,
            "seed_frames": len(seed), "pool_frames": len(train) - len(seed)}


def publish_depth(cfg: ALConfig, repo: Path) -> int:
    """The depth net (the in-process loop's, cached) exported to ONNX and published."""
    train = SegDataset(list_frames(cfg.data, "train", require_labels=True), cfg.size)
    depth = depth_model_for(cfg, train)
    if depth is None:
        raise InvalidInput("the services loop needs a depth model (--depth-source model)")
    onnx = repo.parent / "depth_export" / "model.onnx"
    # declared at the training size, like the trainer's segmentation exports: one scale for both
    result = export_depth(depth.cpu(), onnx, ExportConfig(trace_hw=tuple(cfg.size), declare_input_size=True))
    repo.mkdir(parents=True, exist_ok=True)
    return ModelRepository(repo).publish(DEPTH_MODEL, onnx, build_config(DEPTH_MODEL, result.spec))


def _train_and_publish(trainer: TrainerClient, cfg: ALConfig, term: Terminal, name: str, *, cycle_id: str,
                       pool_id: str, epochs: int, seed: int, tolerance: float) -> dict:
    job = trainer.start_job(JobRequest(
        cycle_id=cycle_id, pool_id=pool_id, publish=True,
        options=TrainingOptions(epochs=epochs, batch_size=cfg.batch_size, learning_rate=cfg.lr, seed=seed),
        policy=PublishPolicy(miou_tolerance=tolerance)))
    with term.bar(name, "train", epochs, unit="epoch") as bar:
        for p in trainer.watch(job.job_id):
            if p.epoch and p.epoch > bar.n:
                bar.update(p.epoch - bar.n)
                bar.set_postfix(loss=f"{p.loss:.4f}")
    job = trainer.get_job(job.job_id)
    if job.state != JobState.SUCCEEDED:
        raise FailedPrecondition(f"training job {job.job_id} for {cycle_id} failed: {job.error}")
    rep = job.report
    return {"job_id": job.job_id, "miou": rep.candidate.miou, "per_class": rep.candidate.per_class_iou,
            "published_version": rep.published_version, "publish_refused": rep.publish_refused,
            "train_seconds": rep.train_seconds}


def wait_until_version_served(target: str, version: int, timeout_s: float = 120.0, poll_s: float = 0.5) -> None:
    """Block until the segmentation server answers with `version` (hot reload done).

    Raises:
        NotReady: the version is not served within timeout_s, or the server cannot be reached at all
            (a wrong address or TLS set-up fails at once, not after the timeout).
        SegxalError: any other answer of the server (it is not waiting for a version to load).
    """
    deadline = time.monotonic() + timeout_s
    with InferenceClient(target, timeout_s=min(10.0, timeout_s)) as inf:
        while time.monotonic() < deadline:
            try:
                if inf.is_ready(SEG_MODEL, str(version)):
                    return
            except NotFound:  # the version is not in the server's repository yet
                pass
            except NotReady as e:
                raise NotReady(f"segmentation server at {target} cannot be reached: {e}") from None
            time.sleep(poll_s)
    raise NotReady(f"segmentation version {version} not served after {timeout_s:.0f} s")


def _publish(coord: CoordinatorClient, target: str, term: Terminal, name: str, version: int) -> None:
    """Register the trainer's new version with the coordinator and wait for the hot reload."""
    with term.bar(name, "publish", 1, unit="version") as bar:
        bar.set_postfix(version=version)
        coord.register_model_version(SEG_MODEL, version=version)
        wait_until_version_served(target, version)
        bar.update(1)


def _label_cycle(cfg: ALConfig, stack: Stack, pool_id: str, cycle_id: str, storage: FrameStorage,
                 coord: CoordinatorClient, ls: LabelStudioOracle | None, term: Terminal, name: str, tasks: int):
    labeling = LabelingConfig(coordinator=stack.targets["coordinator"], pool=pool_id, cycle_id=cycle_id,
                              client_id=f"{cfg.oracle}-oracle", lease_s=120.0)
    if ls is not None:  # people answer in Label Studio; the bridge leases, heartbeats and submits
        return ls.label_cycle(labeling, coord, cycle_id)
    with term.bar(name, "label", tasks, unit="task") as bar, following_tasks(coord, cycle_id, bar), \
            LabelingSession(labeling) as session:
        if cfg.oracle == "machine":
            with InferenceClient(stack.targets["segmentation"]) as inf:
                oracle = MachineOracle(MachineOracleConfig(labeling=labeling, tau=cfg.tau), inf, storage)
                return work(session, oracle)
        scope = "frame" if cfg.oracle == "human-frame" else "regions"
        human = SimulatedHuman(SimulatedHumanConfig(labeling=labeling, dataset=cfg.data, scope=scope,
                                                    outside=cfg.outside, seed=cfg.seed), GroundTruth(cfg.data))
        return work(session, human)


def run(scfg: ServicesLoopConfig) -> dict:
    cfg = scfg.al.validate(SERVICES_ORACLES)
    if cfg.strategy not in ("eem", "eem-topq", "random"):
        raise InvalidInput(f"the services loop ranks with the coordinator's 'eem' (mean or top-q score) or 'random' "
                           f"selection; --strategy {cfg.strategy} is in-process only")
    eem = dataclasses.replace(cfg.eem, score_mode="topq") if cfg.strategy == "eem-topq" else cfg.eem
    if cfg.oracle == "label-studio":
        scfg.label_studio.validate()
    out = Path(cfg.out)
    work_dir = Path(scfg.workdir or out / "services").resolve()
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a fresh repository, database and state per run
    work_dir.mkdir(parents=True)
    t0 = time.time()
    data = prepare_data(cfg, work_dir, scfg.drive_log_frames)
    publish_depth(cfg, work_dir / "repo" / DEPTH_MODEL)
    labels_file, names = "", ()
    if (Path(cfg.data) / LABEL_MAP_FILE).is_file():  # the model's and the pool's classes: the data's label map
        names = load_label_map(Path(cfg.data) / LABEL_MAP_FILE).names
        labels_file = str(work_dir / "labels.txt")
        Path(labels_file).write_text("\n".join(names) + "\n")
    stack_cfg = StackConfig(model_import=scfg.model_import, model_kwargs=scfg.model_kwargs, labels_file=labels_file,
                            workdir=str(work_dir), data=str(Path(cfg.data).resolve()), seed_data=str(data["seed"]),
                            db=scfg.db, size=cfg.size, width=cfg.width, unet_depth=cfg.unet_depth,
                            epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                            dice_threshold=cfg.dice_threshold,
                            storage_roots=[str(Path(cfg.data).resolve()), str(work_dir / "datasets")])
    h, w = cfg.size
    seed_px = data["seed_frames"] * h * w
    records = []
    term = Terminal(cfg.progress)
    with Stack(stack_cfg) as stack, \
            CoordinatorClient(stack.targets["coordinator"], client_id="segxal-loop") as coord, \
            TrainerClient(stack.targets["trainer"]) as trainer, contextlib.ExitStack() as extras:
        term.row(f"services up: {stack.targets}; their logs in {work_dir / 'logs'}")
        ls = None
        if cfg.oracle == "label-studio":
            ls = extras.enter_context(LabelStudioOracle(
                scfg.label_studio, work_dir, [str(work_dir), str(Path(cfg.data).resolve())],
                stack.targets["eem"], progress=cfg.progress))
        eem_stats = extras.enter_context(EemClient(stack.targets["eem"]))
        tc = time.time()
        v1 = _train_and_publish(trainer, cfg, term, "seed", cycle_id="seed", pool_id="", epochs=cfg.init_epochs,
                                seed=cfg.seed, tolerance=scfg.miou_tolerance)
        version = v1["published_version"]
        _publish(coord, stack.targets["segmentation"], term, "seed", version)
        stack.wait_serving("eem")
        pool = coord.create_pool("train-pool", max_frames=cfg.budget, class_names=names)
        coord.ingest(pool.pool_id, [cpb.IngestSource(cityscapes=cpb.CityscapesSource(
            root=str(data["pool"]), split="train"))])
        drive = coord.create_pool("drive-log", class_names=names)
        drive_result = coord.ingest(drive.pool_id, [cpb.IngestSource(drive_log=cpb.DriveLogSource(
            path=str(data["drive_log"])))])
        records.append(cycle_record(0, v1, version, seed_px, None, None, tc, data["seed_frames"]))
        term.row(table_row(records[-1]))
        stop = "cycles"
        storage = FrameStorage([str(work_dir), str(Path(cfg.data).resolve())])
        for cycle in range(1, cfg.cycles + 1):
            tc = time.time()
            cyc = coord.start_cycle(pool.pool_id, cfg.frames_per_cycle,
                                    selection="random" if cfg.strategy == "random" else "eem",
                                    model_name=SEG_MODEL, model_version=version, random_seed=cfg.seed + cycle,
                                    eem=eem, selection_spec=cfg.selection)
            name = f"cycle {cycle}"
            before = eem_stats.stats()
            with term.bar(name, "rank", unit="call") as bar:
                ranked = coord.rank_cycle(cyc.cycle_id)
                bar.set_postfix(scored=ranked.frames_scored, reused=ranked.frames_reused, tasks=len(ranked.tasks))
            after = eem_stats.stats()
            cam_health = cam_degenerate_share(before, after)
            version_health = version_cam_health(after, f"{SEG_MODEL}:{version}")  # the ranking version's
            summary = _label_cycle(cfg, stack, pool.pool_id, cyc.cycle_id, storage, coord, ls, term, name,
                                   len(ranked.tasks))
            report = coord.cycle_report(cyc.cycle_id)
            job = _train_and_publish(trainer, cfg, term, name, cycle_id=cyc.cycle_id, pool_id=pool.pool_id,
                                     epochs=cfg.finetune_epochs, seed=cfg.seed + cycle, tolerance=scfg.miou_tolerance)
            if job["published_version"]:
                version = job["published_version"]
                _publish(coord, stack.targets["segmentation"], term, name, version)
            budget = coord.budget(pool.pool_id)
            rec = cycle_record(cycle, job, version, seed_px, budget, report, tc, data["seed_frames"])
            rec.update(tasks=report.tasks_total, submitted=summary.submitted, released=summary.released,
                       failed_frames=report.failed_frames, cam_degenerate_share=cam_health,
                       cam_health=version_health)
            records.append(rec)
            term.row(table_row(rec))
            if cfg.oracle != "machine" and report.stop_reason == cpb.STOP_REASON_DICE_THRESHOLD_REACHED:
                stop = "dice"
                break
            if budget.exhausted or report.stop_reason == cpb.STOP_REASON_BUDGET_SPENT:
                stop = "budget"
                break
            if report.stop_reason == cpb.STOP_REASON_POOL_EXHAUSTED:
                stop = "pool empty"
                break
        records[-1]["stop_reason"] = stop
        drive_top = rank_drive_log(coord, drive.pool_id, SEG_MODEL, version, eem)
        overlays = render_overlays(stack.targets["eem"], [f["frame_uri"] for f in drive_top][:scfg.overlays], storage,
                                    out / "overlays", eem)
    report = {"config": {"al": json.loads(json.dumps(cfg.__dict__, default=lambda o: o.__dict__)),
                         "db": scfg.db or "sqlite", "workdir": str(work_dir)},
              "cycles": records, "stop_reason": stop, "seconds": time.time() - t0,
              "drive_log": {"frames_ingested": drive_result.frame_count, "top_frames": drive_top},
              "overlays": overlays}
    imageio.atomic_write_bytes(out / "cycles.json", json.dumps(report, indent=2).encode())
    plot_curves({f"{cfg.strategy} (services)": records}, out / "miou_vs_pixels.png")
    return report


def register_cli(sub) -> None:
    p = sub.add_parser("loop", help="the full active-learning loop through the real services")
    add_al_arguments(p, SERVICES_ORACLES)
    p.add_argument("--workdir", default="", help="services' state (default: <out>/services)")
    p.add_argument("--db", default="", help="coordinator database URL (default: SQLite in the workdir)")
    p.add_argument("--miou-tolerance", type=float, default=0.05,
                   help="the trainer publishes a version only if its mIoU is at most this below the served one")
    p.add_argument("--model-import", default="",
                   help="any segmentation model in place of the U-Net, by import path, e.g. "
                        "torchvision.models.segmentation.deeplabv3_mobilenet_v3_large")
    p.add_argument("--model-kwargs", default="{}",
                   help='its keyword arguments as JSON, e.g. {"num_classes": 4, "weights": null, '
                        '"weights_backbone": null}; the classes come from <data>/label_map.json')
    ls = LabelStudioOracleConfig()
    p.add_argument("--ls-url", default=ls.url,
                   help="--oracle label-studio: a running Label Studio (default: start a local one)")
    p.add_argument("--ls-token", default=os.environ.get("SEGXAL_LS_TOKEN", ls.token),
                   help="its API token (or SEGXAL_LS_TOKEN)")
    p.add_argument("--ls-document-root", default=ls.document_root,
                   help="with --ls-url: that server's LOCAL_FILES_DOCUMENT_ROOT, as this machine sees it")
    p.add_argument("--ls-venv", default=ls.venv, help="the local Label Studio's venv (made when missing)")
    p.add_argument("--ls-wait", type=float, default=ls.wait_s,
                   help="longest wait in seconds for the people per cycle (0: as long as it takes)")
    p.set_defaults(func=_cmd_loop)
    p = sub.add_parser("up", help="start the five services and wait (Ctrl-C stops them)")
    p.add_argument("--workdir", required=True,
                   help="folder of the services' state: model repository, database, storage, logs")
    p.add_argument("--data", required=True,
                   help="Cityscapes-layout folder: the trainer's held-out split, readable by the services")
    p.add_argument("--seed-data", default="", help="Cityscapes-layout folder of the trainer's seed set (default: none)")
    p.add_argument("--db", default="", help="coordinator database URL (default: SQLite in the workdir)")
    p.add_argument("--backend", choices=("segxal", "triton"), default="segxal",
                   help="inference servers: the project's (default) or one real Triton Inference Server "
                        "(scripts/setup_triton.sh; Python backend running ONNX Runtime)")
    p.set_defaults(func=_cmd_up)


def _cmd_loop(args) -> int:
    ls = LabelStudioOracleConfig(url=args.ls_url, token=args.ls_token, document_root=args.ls_document_root,
                                 venv=args.ls_venv, wait_s=args.ls_wait)
    # config_from_args validates: a bad flag fails here, before a log file or a service exists
    scfg = ServicesLoopConfig(al=config_from_args(args, SERVICES_ORACLES), workdir=args.workdir, db=args.db,
                              miou_tolerance=args.miou_tolerance, label_studio=ls,
                              model_import=args.model_import, model_kwargs=args.model_kwargs)
    log_file = Path(args.out) / "loop.log"
    print(f"segxal loop: logs in {log_file}", flush=True)
    with logs_in_file(log_file, verbose=args.verbose):
        report = run(scfg)
    print(f"stopped: {report['stop_reason']}; {report['seconds']:.0f} s; wrote {Path(args.out) / 'cycles.json'}, "
          f"miou_vs_pixels.png and {len(report['overlays'])} overlays")
    return 0


def _cmd_up(args) -> int:
    stack = Stack(StackConfig(workdir=args.workdir, data=args.data, seed_data=args.seed_data, db=args.db,
                              storage_roots=[args.data], backend=args.backend))
    with stack:
        for name, target in stack.targets.items():
            print(f"{name:13s} {target}", flush=True)
        print("all services healthy; Ctrl-C stops them", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping...", flush=True)
    return 0
