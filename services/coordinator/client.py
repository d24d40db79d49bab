"""The coordinator's client: what labeling clients, the trainer and the main loop call.

    with CoordinatorClient("localhost:50061", client_id="labeler-1") as coord:
        pool = coord.create_pool("drive-2026-11", max_frames=500)
        coord.ingest(pool.pool_id, [drive_log_source("/logs/a.mcap")])
        cycle = coord.start_cycle(pool.pool_id, batch_size=16)
        coord.rank_cycle(cycle.cycle_id)
        for task in coord.lease(pool.pool_id, max_tasks=4, lease_seconds=600):
            labels = ...                                   # trainIds uint8 [H, W], 255 = not annotated
            coord.submit(task, labels)                     # idempotent: safe to retry
        coord.cycle_report(cycle.cycle_id).stop_reason

Replies are the segxal.coordinator.v1 messages. Errors are our exceptions (segxal.errors), mapped
from the status code: NotFound, InvalidInput, FailedPrecondition (stale lease...), NotReady.
Channels come from services.common.channel (keepalive, TLS, token, round_robin over replicas).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from segxal import imageio
from segxal.eem.options import EEMOptions
from segxal.selection import SelectionSpec
from segxal.annotation import LABEL_IDS, TRAIN_IDS, EncodedMask, encode_class_rles
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from segxalpb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from services.common.channel import ChannelConfig
from services.common.client import GrpcClient
from services.coordinator.convert import SERVICE_NAME, mask_to_proto, selection_spec_to_proto
from services.eem.wire import eem_options_to_proto

_SELECTION = {"eem": pb.SELECTION_EEM, "random": pb.SELECTION_RANDOM}


def image_folder_source(path: str, recursive: bool = False) -> pb.IngestSource:
    return pb.IngestSource(image_folder=pb.ImageFolderSource(path=str(path), recursive=recursive))


def cityscapes_source(root: str, split: str, require_labels: bool = False) -> pb.IngestSource:
    return pb.IngestSource(cityscapes=pb.CityscapesSource(root=str(root), split=split,
                                                          require_labels=require_labels))


def drive_log_source(path: str, topics: Sequence[str] = (), near_duplicate_threshold: float | None = None,
                     min_gap_s: float = 0.0) -> pb.IngestSource:
    log = pb.DriveLogSource(path=str(path), topics=list(topics), min_gap_s=min_gap_s)
    if near_duplicate_threshold is not None:
        log.near_duplicate_threshold = near_duplicate_threshold
    return pb.IngestSource(drive_log=log)


def encode_mask(labels: np.ndarray | EncodedMask, label_space: str = TRAIN_IDS, encoding: str = "png") -> pb.LabelMask:
    """A label array (uint8 [H, W]) as a LabelMask: 8-bit PNG, or one COCO RLE per class."""
    if isinstance(labels, EncodedMask):
        return mask_to_proto(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise InvalidInput(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    if label_space not in (TRAIN_IDS, LABEL_IDS):
        raise InvalidInput(f"label_space must be {TRAIN_IDS!r} or {LABEL_IDS!r}")
    if encoding == "png":
        return mask_to_proto(EncodedMask(label_space, png=imageio.encode_png(labels)))
    if encoding == "rle":
        return mask_to_proto(EncodedMask(label_space, rle=encode_class_rles(labels)))
    raise InvalidInput(f"encoding must be 'png' or 'rle', got {encoding!r}")


def pool_class_names(pool: pb.Pool) -> tuple[str, ...]:
    """The classes a pool is labelled in, index = class id (a coordinator from before class lists
    sends none: the Cityscapes trainIds)."""
    return tuple(pool.class_names) or tuple(CLASS_NAMES)


class CoordinatorClient(GrpcClient):
    """Thread-safe; a context manager that closes its channel (services.common.client.GrpcClient:
    deadlines, errors, health).

    Args:
        target: "host:port", "h1:p1,h2:p2" (round_robin over replicas) or "dns:///svc:port".
        client_id: names this client as a lease holder (shown in refusals to others).
        timeout_s: default deadline of each call (None: none); rank_cycle and ingest state their own.
    """

    stub_class = pb_grpc.CoordinatorStub
    service_name = SERVICE_NAME
    what = "coordinator"

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None, *, client_id: str = "",
                 timeout_s: float | None = 30.0):
        super().__init__(target, channel_cfg, timeout_s=timeout_s)
        self.client_id = client_id

    # ---- pools and frames
    def create_pool(self, name: str, *, max_frames: int = 0, max_regions: int = 0, max_pixels: int = 0,
                    class_names: Sequence[str] = ()) -> pb.Pool:
        """A new pool. `class_names`: the classes it is labelled in, index = class id (the segmentation
        model's, e.g. segxal.labels.read_label_file of its Triton label file); empty: Cityscapes."""
        return self._call("CreatePool", pb.CreatePoolRequest(name=name, budget=pb.BudgetLimits(
            max_frames=max_frames, max_regions=max_regions, max_pixels=max_pixels), class_names=list(class_names)))

    def get_pool(self, pool_id: str = "", *, name: str = "") -> pb.Pool:
        return self._call("GetPool", pb.GetPoolRequest(pool_id=pool_id, name=name))

    def list_pools(self) -> list[pb.Pool]:
        return list(self._call("ListPools", pb.ListPoolsRequest()).pools)

    def ingest(self, pool_id: str, sources: Sequence[pb.IngestSource],
               timeout_s: float | None = 600.0) -> pb.IngestFramesResponse:
        """Per-source results: a source that failed has `error` set; the rest was ingested."""
        return self._call("IngestFrames", pb.IngestFramesRequest(pool_id=pool_id, sources=list(sources)),
                          timeout_s)

    def frames(self, pool_id: str, page_size: int = 1000) -> Iterator[pb.Frame]:
        token = ""
        while True:
            page = self._call("ListFrames", pb.ListFramesRequest(pool_id=pool_id, page_size=page_size,
                                                                 page_token=token))
            yield from page.frames
            token = page.next_page_token
            if not token:
                return

    # ---- model versions
    def register_model_version(self, model_name: str, uri: str = "", version: int = 0) -> pb.ModelVersion:
        return self._call("RegisterModelVersion", pb.RegisterModelVersionRequest(
            model_name=model_name, version=version, uri=uri))

    def list_model_versions(self, model_name: str = "") -> list[pb.ModelVersion]:
        return list(self._call("ListModelVersions", pb.ListModelVersionsRequest(model_name=model_name)).versions)

    def current_model_version(self, model_name: str = "") -> pb.ModelVersion:
        return self._call("GetCurrentModelVersion", pb.GetCurrentModelVersionRequest(model_name=model_name))

    # ---- cycles
    @staticmethod
    def pick_reasons(task: pb.Task) -> str:
        """Why the cycle's selection picked a task's frame, in one line for a labeler ('' when the
        task carries no reasons): its pick order, score, distance to the nearest labelled or
        earlier-picked frame, class gain and drive log."""
        if not task.HasField("reasons"):
            return ""
        r = task.reasons
        parts = [f"pick {r.order}", f"score {r.score:.4f}"]
        if r.HasField("distance"):
            parts.append(f"distance {r.distance:.3f} to the nearest labelled or picked frame")
        if r.HasField("class_gain"):
            parts.append(f"class gain {r.class_gain:.2f}")
        if r.log:
            parts.append(f"log {r.log}")
        return ", ".join(parts)

    def start_cycle(self, pool_id: str, batch_size: int, *, selection: str = "eem", model_name: str = "",
                    model_version: int = 0, dice_threshold: float | None = None, random_seed: int = 0,
                    cancel_unfinished: bool = False, eem: EEMOptions | None = None,
                    selection_spec: SelectionSpec | None = None) -> pb.Cycle:
        """Open the pool's next cycle. `eem`: the EEM maths it ranks with (None: the defaults),
        stored with the cycle; scores are reused only under the same model version and options."""
        if selection not in _SELECTION:
            raise InvalidInput(f"selection must be one of {sorted(_SELECTION)}, got {selection!r}")
        req = pb.StartCycleRequest(pool_id=pool_id, batch_size=batch_size, selection=_SELECTION[selection],
                                   model_name=model_name, model_version=model_version,
                                   random_seed=random_seed, cancel_unfinished=cancel_unfinished)
        if dice_threshold is not None:
            req.dice_threshold = dice_threshold
        if eem is not None:
            req.eem_options.CopyFrom(eem_options_to_proto(eem))
        if selection_spec is not None:
            req.selection_spec.CopyFrom(selection_spec_to_proto(selection_spec))
        return self._call("StartCycle", req)

    def rank_cycle(self, cycle_id: str, timeout_s: float | None = 3600.0) -> pb.RankCycleResponse:
        return self._call("RankCycle", pb.RankCycleRequest(cycle_id=cycle_id), timeout_s)

    def cycle_report(self, cycle_id: str = "", *, pool_id: str = "") -> pb.CycleReport:
        return self._call("GetCycleReport", pb.GetCycleReportRequest(cycle_id=cycle_id, pool_id=pool_id))

    # ---- tasks and annotations
    def lease(self, pool_id: str, max_tasks: int = 1, lease_seconds: float = 0.0, *,
              cycle_id: str = "", frame_id: str = "") -> list[pb.Task]:
        """Tasks leased to this client (each carries its lease_token), best first; [] when none wait.
        frame_id: only that frame's waiting task."""
        return list(self.lease_tasks(pool_id, max_tasks, lease_seconds, cycle_id=cycle_id, frame_id=frame_id).tasks)

    def lease_tasks(self, pool_id: str, max_tasks: int = 1, lease_seconds: float = 0.0, *,
                    cycle_id: str = "", frame_id: str = "") -> pb.LeaseTasksResponse:
        return self._call("LeaseTasks", pb.LeaseTasksRequest(
            pool_id=pool_id, cycle_id=cycle_id, client_id=self.client_id, max_tasks=max_tasks,
            lease_seconds=lease_seconds, frame_id=frame_id))

    def heartbeat(self, task: pb.Task, lease_seconds: float = 0.0) -> float:
        """Extend the lease; returns the new expiry (UNIX seconds)."""
        return self._call("HeartbeatTask", pb.HeartbeatTaskRequest(
            task_id=task.task_id, lease_token=task.lease_token, lease_seconds=lease_seconds)).lease_expires_unix_s

    def release(self, task: pb.Task) -> None:
        self._call("ReleaseTask", pb.ReleaseTaskRequest(task_id=task.task_id, lease_token=task.lease_token))

    def submit(self, task: pb.Task, labels: np.ndarray | EncodedMask, *, label_space: str = TRAIN_IDS,
               encoding: str = "png", region_ids: Sequence[int] = (),
               prediction: np.ndarray | None = None, idempotency_key: str = "") -> pb.SubmitAnnotationResponse:
        """Submit an annotation of a leased task.

        Args:
            labels: uint8 [H, W] in `label_space` (trainIds: 255 = not annotated), or an EncodedMask.
            encoding: "png" or "rle" (one COCO RLE per class).
            region_ids: the task regions fixed (a region-level annotation); empty = whole frame.
            prediction: the model's trainIds for DICE, when the client has a fresher one.
            idempotency_key: same key = same annotation; empty: the content is the key.
        Raises:
            FailedPrecondition: the lease was taken over or released, or the task holds another annotation.
            InvalidInput: wrong size, unknown label ids, bad region ids.
        """
        req = pb.SubmitAnnotationRequest(
            task_id=task.task_id, lease_token=task.lease_token, client_id=self.client_id,
            scope=pb.ANNOTATION_SCOPE_REGIONS if region_ids else pb.ANNOTATION_SCOPE_WHOLE_FRAME,
            region_ids=list(region_ids), mask=encode_mask(labels, label_space, encoding),
            idempotency_key=idempotency_key)
        if prediction is not None:
            req.prediction.CopyFrom(encode_mask(prediction, TRAIN_IDS, "png"))
        return self._call("SubmitAnnotation", req)

    def submit_request(self, request: pb.SubmitAnnotationRequest) -> pb.SubmitAnnotationResponse:
        """Send a hand-built request (e.g. labelIds RLE from a labeling platform)."""
        return self._call("SubmitAnnotation", request)

    def annotations(self, pool_id: str, cycle_id: str = "", page_size: int = 1000) -> Iterator[pb.Annotation]:
        token = ""
        while True:
            page = self._call("ListAnnotations", pb.ListAnnotationsRequest(
                pool_id=pool_id, cycle_id=cycle_id, page_size=page_size, page_token=token))
            yield from page.annotations
            token = page.next_page_token
            if not token:
                return

    # ---- budget
    def budget(self, pool_id: str) -> pb.Budget:
        return self._call("GetBudget", pb.GetBudgetRequest(pool_id=pool_id))
