"""The EEM scoring pipeline behind the service: frame URI -> decoded image -> segmentation and
depth through the project's one inference client -> segxal.eem.frame.score_frame (the very
function the in-process loop uses) -> score, regions, PNG maps.

Scale. The EEM maths (proximity, PAE, EEM, score, threshold, components) runs at the model's
input size, on the maps as the models return them: the frame is decoded once and resized once
(segxal.resize) to the segmentation model's input (the depth model's too when both declare the
same size; a depth map of another size is resized to the segmentation model's). Only what leaves
the service is in frame coordinates: regions (bbox, polygon, area, RLE: each returned component
upsampled nearest-neighbour to the frame) and, when asked, the map and label PNGs (resized to the
frame at encode time). The score is the mean (or top-q mean) over the model-size EEM, no longer
over the EEM at frame size: bilinear upsampling does not keep the mean exactly (measured on ten
1024 x 2048 / 1920 x 1080 frames, 256 x 512 models: |difference| <= 0.1 % of the score, same
ranking order). A model with no declared size sees the frame as is, so everything is at the
frame's size, as before.

Concurrency. Frames are scored on one thread pool of `max_concurrency` workers shared by every
RPC, so the inference servers see a bounded number of requests at once whatever the number of
callers. Within a frame, segmentation and depth run at the same time (depth on a second pool).
Frames are sent to the inference servers one image per request: those servers batch concurrent
requests themselves (dynamic batching, config.pbtxt `dynamic_batching`), so keeping
`max_concurrency` frames in flight is what fills their batches; batching again here would only
add latency. A stream reads at most `stream_window` requests ahead of the results it has sent,
so a caller streaming 5,000 URIs never makes this process hold 5,000 frames (flat memory), and
gRPC flow control pushes back on the caller.

Deadlines. Every inference call carries the caller's remaining deadline, capped at
`inference_timeout_s`; a down backend fails fast (connection refused is UNAVAILABLE at once) and a
hung one fails at the deadline: NotReady. A frame whose caller gave up (deadline passed, call
cancelled) is not started, and one in progress stops at the next step (before inference, before
the EEM maths): DeadlineExceeded, no work for nobody.

No gRPC types here: requests and results are services.eem.api dataclasses, errors are
segxal.errors exceptions (per frame in streams).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from segxal import imageio
from segxal.eem.frame import FrameEEM, score_frame
from segxal.eem.health import CamHealthMonitor, cam_degenerate
from segxal.eem.regions import otsu_threshold
from segxal.errors import InvalidInput, SegxalError
from segxal.labels import CLASS_NAMES
from segxal.modelspec import NO_CAM, ModelSpec, plan_resize
from segxal.resize import resize_image, resize_map, resize_nearest
from segxal.storage import FrameStorage
from services.common.errors import DeadlineExceeded
from services.eem.api import FrameRequest, ModelVersions, ScoredFrame, Stats, quantise_map
from services.inference.client import InferenceClient

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    # Frames scored at once across all RPCs. 2 x the inference servers' batch of interest keeps
    # them busy while this process decodes and fuses; more only queues.
    max_concurrency: int = 4
    # Requests a stream reads ahead of the results it has sent (bounds memory per stream).
    stream_window: int = 8
    inference_timeout_s: float = 30.0  # deadline of each segmentation / depth call
    latency_window: int = 1024  # recent frame latencies kept for the stats percentiles


_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as an enormous time remaining


def _always_active() -> bool:
    return True


@dataclass(frozen=True)
class Caller:
    """Who waits for a frame: their deadline (time.monotonic(), None = none) and whether they
    still wait (False once the call was cancelled or timed out)."""

    deadline: float | None = None
    is_active: Callable[[], bool] = _always_active

    @classmethod
    def of(cls, context) -> "Caller":
        """The caller of an RPC, from its servicer context (time_remaining(), is_active())."""
        remaining = context.time_remaining()
        deadline = None if remaining is None or remaining > _NO_DEADLINE_S else time.monotonic() + remaining
        return cls(deadline, context.is_active)

    def timeout(self, cap_s: float, step: str) -> float:
        """Seconds an outbound call may take: the time the caller has left, at most cap_s.

        Raises:
            DeadlineExceeded: the caller gave up or has no time left (names the step not run).
        """
        if not self.is_active():
            raise DeadlineExceeded(f"the caller cancelled or gave up; stopped {step}")
        if self.deadline is None:
            return cap_s
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the caller's deadline passed; stopped {step}")
        return min(cap_s, left)


class _Counters:
    """Frames scored/failed and a bounded window of recent latencies (memory stays flat)."""

    def __init__(self, window: int):
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._started = time.monotonic()
        self.scored = self.failed = self.in_flight = self.cam_degenerate = 0

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, latency_ms: float, ok: bool, cam_degenerate: bool = False) -> None:
        with self._lock:
            self.in_flight -= 1
            if ok:
                self.scored += 1
                self.cam_degenerate += int(cam_degenerate)
                self._latencies.append(latency_ms)
            else:
                self.failed += 1

    def snapshot(self) -> Stats:
        with self._lock:
            lat = np.asarray(self._latencies, dtype=np.float64)
            scored, failed, in_flight, degenerate = self.scored, self.failed, self.in_flight, self.cam_degenerate
        mean, p50, p95 = (float(lat.mean()), *map(float, np.percentile(lat, [50, 95]))) if lat.size else (0.0,) * 3
        return Stats(scored, failed, in_flight, mean, p50, p95, time.monotonic() - self._started, degenerate)


def _frame_error(uri: str, e: SegxalError) -> SegxalError:
    """The same kind of error, its message naming the frame (once)."""
    msg = str(e)
    if uri in msg:
        return e
    err = type(e)(f"{uri}: {msg}")
    if hasattr(e, "code"):
        err.code = e.code
    return err


class ScoringPipeline:
    """Scores frames named by URI. Thread-safe; `close` when done.

    Args:
        storage: where frames are read from (confined to its roots).
        segmentation: inference client whose `infer_segmentation` gives labels, EBU, CAM.
        depth: inference client whose `infer_depth` gives relative inverse depth (may be the
            same object as `segmentation` when one server serves both models).
        cfg: concurrency and deadlines.
    """

    def __init__(self, storage: FrameStorage, segmentation: InferenceClient, depth: InferenceClient,
                 cfg: PipelineConfig | None = None):
        self.cfg = cfg = cfg or PipelineConfig()
        if cfg.max_concurrency < 1 or cfg.stream_window < 1:
            raise InvalidInput("max_concurrency and stream_window must be >= 1")
        self.storage = storage
        self.segmentation = segmentation
        self.depth = depth
        self._frames = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="eem-frame")
        self._depth_calls = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="eem-depth")
        self._counters = _Counters(cfg.latency_window)
        self._health = CamHealthMonitor()  # per segmentation model version: dead share, corr(CAM, EBU)

    # -- one frame -----------------------------------------------------------------------------

    def score(self, request: FrameRequest, caller: Caller = Caller()) -> ScoredFrame:
        """Score one frame (on the shared pool, so it counts against max_concurrency).

        Args:
            request: the frame and options.
            caller: the deadline and liveness of whoever waits (Caller.of(context) in a servicer);
                backend calls get the time the caller has left.

        Raises:
            InvalidInput: bad options, a corrupt image or a size the models cannot take.
            NotFound / PermissionDenied: missing file / outside the storage roots.
            NotReady: an inference backend is down or missed its deadline.
            DeadlineExceeded: the caller gave up before the frame was scored.
            (Every message names the frame.)
        """
        return self._frames.submit(self._score_counted, request, caller).result()

    def _score_counted(self, request: FrameRequest, caller: Caller) -> ScoredFrame:
        started = time.perf_counter()
        self._counters.begin()
        result = None
        try:
            result = self._score(request, caller, started)
            return result
        except SegxalError as e:
            raise _frame_error(request.uri, e) from None
        finally:
            self._counters.end((time.perf_counter() - started) * 1e3, result is not None,
                               result is not None and result.cam_degenerate)

    def _score(self, request: FrameRequest, caller: Caller, started: float) -> ScoredFrame:
        if request.rejected is not None:
            raise request.rejected
        opts = request.options.validate()
        caller.timeout(self.cfg.inference_timeout_s, "before reading the frame")  # waited in the queue
        image = self.storage.read_rgb(request.uri)  # uint8 [H, W, 3], decoded once
        timeout = caller.timeout(self.cfg.inference_timeout_s, "before inference")
        seg_spec = self.segmentation.model_spec(self.segmentation.segmentation_model, timeout_s=timeout)
        depth_spec = self.depth.model_spec(self.depth.depth_model, timeout_s=timeout)
        seg_image, depth_image = _model_images(image, seg_spec, depth_spec)
        depth_call = self._depth_calls.submit(self.depth.infer_depth, depth_image[None], timeout_s=timeout)
        seg_error = None
        try:
            # beta = 0: the CAM cannot change the EEM, so it is not asked for (nor computed)
            seg = self.segmentation.infer_segmentation(seg_image[None], with_cam=opts.eem.uses_cam,
                                                       timeout_s=timeout)
        except SegxalError as e:
            seg_error = e  # still wait for depth: the frame holds its slot until both calls end
        inverse_depth, depth_version = depth_call.result()  # [1, h', w']: the depth model's size
        if seg_error is not None:
            raise seg_error
        work_hw = seg_image.shape[:2]  # [h, w]: the maths runs at the segmentation model's size
        inverse_depth = resize_map(inverse_depth[0], work_hw)  # no-op when the sizes agree
        # a model without a CAM (no linear head, segxal.graph.add_eem) is ranked by EBU alone
        cam = seg["cam"][0] if seg["cam"] is not None and seg_spec.has_cam else None
        caller.timeout(self.cfg.inference_timeout_s, "before the EEM maths")
        frame = score_frame(seg["labels"][0], seg["ebu"][0], cam, inverse_depth, opts.eem,
                            with_regions=opts.regions, depth_convention=depth_spec.depth_convention,
                            depth_tau=depth_spec.depth_tau, class_names=seg_spec.class_names,
                            frame_hw=image.shape[:2])
        result = self._result(request, frame, image.shape[:2],
                              ModelVersions(f"{self.segmentation.segmentation_model}:{seg['model_version']}",
                                            f"{self.depth.depth_model}:{depth_version}"),
                              started)
        result.cam_layer = NO_CAM if cam is None else (seg_spec.cam_layer or "")
        result.class_names = tuple(seg_spec.class_names or CLASS_NAMES)
        result.cam_degenerate = cam is not None and bool(cam_degenerate(cam))
        if seg.get("embedding") is not None:  # [1, D]; models without the output give none
            result.embedding = np.asarray(seg["embedding"][0], np.float32)
        result.class_histogram = class_histogram(seg["labels"][0], len(result.class_names))
        if cam is not None:
            self._cam_health(result.model_versions.segmentation, cam, seg["ebu"][0], result.cam_layer)
        return result

    def _cam_health(self, version: str, cam: np.ndarray, ebu: np.ndarray, cam_layer: str) -> None:
        """Count the frame's CAM for its model version; a CAM that died or became a confidence map is
        logged once per version (and flagged in the stats from then on)."""
        _, problems = self._health.add(version, cam, ebu, cam_layer)
        for problem in problems:
            log.warning("segmentation model %s (CAM at %s): %s", version, cam_layer or "?", problem)

    def _result(self, request: FrameRequest, frame: FrameEEM, size: tuple[int, int],
                versions: ModelVersions, started: float) -> ScoredFrame:
        opts = request.options
        maps = {"ebu": frame.ebu, "cam": frame.cam, "proximity": frame.proximity, "eem": frame.eem}
        threshold = 0.0
        if opts.regions:
            # extract_regions computes the same Otsu threshold internally; it is recomputed here
            # only to report it (one histogram, ~1 ms)
            threshold = opts.eem.threshold if opts.eem.threshold_mode == "fixed" else otsu_threshold(frame.eem)
        return ScoredFrame(
            frame_id=request.frame_id, uri=request.uri, score=frame.score,
            height=int(size[0]), width=int(size[1]), model_versions=versions, threshold=float(threshold),
            maps_png={k: imageio.encode_png(quantise_map(resize_map(maps[k], size), opts.map_bits))
                      for k in opts.maps},
            map_bits=opts.map_bits, regions=frame.regions,
            labels_png=imageio.encode_png(resize_nearest(frame.labels.astype(np.uint8), size)) if opts.labels else b"",
            latency_ms=(time.perf_counter() - started) * 1e3)

    def _score_or_error(self, request: FrameRequest, caller: Caller) -> ScoredFrame:
        """A result either way: a frame's failure must not end the stream it came in."""
        try:
            return self._score_counted(request, caller)
        except Exception as e:  # noqa: BLE001 - per-frame isolation; the edge maps it to a status
            return ScoredFrame(frame_id=request.frame_id, uri=request.uri, error=e)

    # -- many frames ---------------------------------------------------------------------------

    def score_many(self, requests: Iterable[FrameRequest], caller: Caller = Caller()) -> Iterator[ScoredFrame]:
        """Score frames as they come, yielding results as they finish (not in request order).
        `caller`: the stream's deadline and liveness (as in `score`).

        A frame that fails yields a ScoredFrame with `error` set; the others go on. At most
        `stream_window` requests are read ahead of the yielded results. Closing the iterator
        (the caller went away) stops reading requests; frames already started finish.

        Raises:
            whatever iterating `requests` raises, after the results already started are yielded.
        """
        done = queue.SimpleQueue()  # ScoredFrame | _FeedEnd
        window = threading.Semaphore(self.cfg.stream_window)
        stop = threading.Event()

        def feed() -> None:
            submitted, error = 0, None
            try:
                for request in requests:
                    window.acquire()
                    if stop.is_set():
                        break
                    self._frames.submit(self._score_or_error, request, caller).add_done_callback(
                        lambda f: done.put(f.result()))
                    submitted += 1
            except Exception as e:  # noqa: BLE001 - handed to the consumer thread, raised there
                error = e
            done.put(_FeedEnd(submitted, error))

        feeder = threading.Thread(target=feed, name="eem-stream-feed", daemon=True)
        feeder.start()
        yielded, end = 0, None
        try:
            while end is None or yielded < end.submitted:
                item = done.get()
                if isinstance(item, _FeedEnd):
                    end = item
                    continue
                window.release()
                yielded += 1
                yield item
            if end.error is not None:
                raise end.error
        finally:
            stop.set()
            window.release()  # wake the feeder if it waits for room, so it sees `stop`

    # -- backends, stats, shutdown -------------------------------------------------------------

    def backends_ready(self) -> bool:
        """True when both inference servers answer and report their model ready."""
        try:
            return bool(self.segmentation.is_ready(self.segmentation.segmentation_model)
                        and self.depth.is_ready(self.depth.depth_model))
        except SegxalError as e:
            log.debug("inference backend not ready: %s", e)
            return False

    def stats(self) -> Stats:
        stats = self._counters.snapshot()
        stats.cam_health = self._health.snapshot()
        return stats

    def close(self, wait: bool = True) -> None:
        """Stop the pools (frames in progress finish when wait=True)."""
        self._frames.shutdown(wait=wait, cancel_futures=not wait)
        self._depth_calls.shutdown(wait=wait, cancel_futures=not wait)


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of a label map's pixels per class: float32 [num_classes], summing to 1 (labels at or
    above num_classes, which a model's argmax never gives, are not counted)."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    return (counts / max(1.0, counts.sum())).astype(np.float32)


def _model_images(image: np.ndarray, seg_spec: ModelSpec, depth_spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The frame at each model's input content size (segxal.modelspec.plan_resize), resized once
    per distinct size, so the inference client finds it at size and resizes nothing either way.

    Returns:
        (image for segmentation, image for depth), uint8 [h, w, 3]; the same array when the sizes agree.

    Raises:
        InvalidInput: a size the models cannot take (as the inference client says it).
    """
    frame_hw = image.shape[:2]
    seg_hw = plan_resize(seg_spec, frame_hw).content_hw
    depth_hw = plan_resize(depth_spec, frame_hw).content_hw
    seg_image = resize_image(image, seg_hw)
    return seg_image, seg_image if depth_hw == seg_hw else resize_image(image, depth_hw)


@dataclass
class _FeedEnd:
    submitted: int
    error: BaseException | None

