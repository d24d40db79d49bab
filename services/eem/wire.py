"""segxal.eem.v1 messages <-> services.eem.api dataclasses: the one place that knows both, used
by the servicer (requests in, results out) and by the client (requests out, results in)."""
from __future__ import annotations

from typing import Iterable, Iterator

import grpc
import numpy as np

from segxal.eem.options import EEMOptions, resolve_weights
from segxal.eem.health import CamHealth
from segxal.eem.regions import Region
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, NUM_CLASSES
from segxalpb.common.v1 import types_pb2 as types_pb
from segxalpb.eem.v1 import eem_pb2 as pb
from services.common.errors import error_from_status, status_for
from services.eem.api import FrameRequest, ModelVersions, ScoredFrame, ScoreOptions, Stats

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EemScoring"].full_name  # "segxal.eem.v1.EemScoring"
_DEFAULTS = EEMOptions()
_SCORE_MODE = {pb.SCORE_MODE_UNSPECIFIED: "mean", pb.SCORE_MODE_MEAN: "mean", pb.SCORE_MODE_TOP_Q: "topq"}
_THRESHOLD_MODE = {pb.THRESHOLD_MODE_UNSPECIFIED: "otsu", pb.THRESHOLD_MODE_OTSU: "otsu",
                   pb.THRESHOLD_MODE_FIXED: "fixed"}
_MAP_KIND = {pb.MAP_KIND_EBU: "ebu", pb.MAP_KIND_CAM: "cam", pb.MAP_KIND_PROXIMITY: "proximity",
             pb.MAP_KIND_EEM: "eem"}
_FUSION = {pb.FUSION_UNSPECIFIED: _DEFAULTS.fusion, pb.FUSION_ADDITIVE: "additive",
           pb.FUSION_MULTIPLICATIVE: "multiplicative"}
_FUSION_PB = {"additive": pb.FUSION_ADDITIVE, "multiplicative": pb.FUSION_MULTIPLICATIVE}
_BITS = {pb.MAP_BIT_DEPTH_UNSPECIFIED: 8, pb.MAP_BIT_DEPTH_8: 8, pb.MAP_BIT_DEPTH_16: 16}


_SCORE_MODE_PB = {"mean": pb.SCORE_MODE_MEAN, "topq": pb.SCORE_MODE_TOP_Q}
_THRESHOLD_MODE_PB = {"otsu": pb.THRESHOLD_MODE_OTSU, "fixed": pb.THRESHOLD_MODE_FIXED}
_MAP_KIND_PB = {v: k for k, v in _MAP_KIND.items()}
_BITS_PB = {8: pb.MAP_BIT_DEPTH_8, 16: pb.MAP_BIT_DEPTH_16}


def _enum(table: dict, value: int, what: str):
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"unknown {what} {value}") from None


def _field(msg, name: str, default):
    """A field with presence: its value when set (0 included), else the default."""
    return getattr(msg, name) if msg.HasField(name) else default


# -- requests ------------------------------------------------------------------------------------

def eem_options_from_proto(msg: pb.EemOptions) -> EEMOptions:
    """The EEM maths of a request or a cycle; unset fields take EEMOptions' defaults, a set 0 stays
    0. Not validated here: the caller validates (EEMOptions.validate) where the error is reported.

    Raises:
        InvalidInput: an unknown score or threshold mode.
    """
    alpha, beta = resolve_weights(msg.alpha if msg.HasField("alpha") else None,
                                  msg.beta if msg.HasField("beta") else None)
    return EEMOptions(
        alpha=alpha, beta=beta, fusion=_enum(_FUSION, msg.fusion, "fusion"),
        score_mode=_enum(_SCORE_MODE, msg.score_mode, "score mode"),
        q=_field(msg, "top_q", _DEFAULTS.q),
        threshold_mode=_enum(_THRESHOLD_MODE, msg.threshold_mode, "threshold mode"),
        threshold=_field(msg, "threshold", _DEFAULTS.threshold),
        min_region_area=_field(msg, "min_region_area", _DEFAULTS.min_region_area))


def eem_options_to_proto(e: EEMOptions) -> pb.EemOptions:
    """Every field set, so the receiver sees exactly these options.

    Raises:
        InvalidInput: an unknown score or threshold mode (never sent as the default).
    """
    return pb.EemOptions(alpha=e.alpha, beta=e.beta, score_mode=_enum(_SCORE_MODE_PB, e.score_mode, "score mode"),
                         top_q=e.q, threshold_mode=_enum(_THRESHOLD_MODE_PB, e.threshold_mode, "threshold mode"),
                         threshold=e.threshold, min_region_area=e.min_region_area,
                         fusion=_enum(_FUSION_PB, e.fusion, "fusion"))


def options_from_proto(msg: pb.ScoreOptions) -> ScoreOptions:
    """Request options as the pipeline takes them (validated there, per frame).

    Raises:
        InvalidInput: unknown enum values.
    """
    maps = tuple(dict.fromkeys(_enum(_MAP_KIND, k, "map kind") for k in msg.maps))
    return ScoreOptions(eem=eem_options_from_proto(msg.eem), maps=maps,
                        map_bits=_enum(_BITS, msg.map_bit_depth, "map bit depth"),
                        regions=msg.return_regions, labels=msg.return_labels)


def options_to_proto(opts: ScoreOptions) -> pb.ScoreOptions:
    """Raises:
        InvalidInput: an unknown mode, map kind or bit depth (sent as the default, it would be
            scored with options the caller did not ask for).
    """
    return pb.ScoreOptions(
        eem=eem_options_to_proto(opts.eem), maps=[_enum(_MAP_KIND_PB, m, "map kind") for m in opts.maps],
        map_bit_depth=_enum(_BITS_PB, opts.map_bits, "map bit depth"),
        return_regions=opts.regions, return_labels=opts.labels)


def request_from_proto(msg: pb.ScoreRequest) -> FrameRequest:
    """Raises:
        InvalidInput: unknown enum values (the message names the frame).
    """
    try:
        options = options_from_proto(msg.options)
    except InvalidInput as e:
        raise InvalidInput(f"{msg.uri or msg.frame_id}: {e}") from None
    return FrameRequest(uri=msg.uri, frame_id=msg.frame_id, options=options)


def requests_from_proto(messages: Iterable[pb.ScoreRequest]) -> Iterator[FrameRequest]:
    """Stream requests; one whose options cannot be decoded carries the reason and fails on its
    own inside the stream like any other bad input (the stream goes on)."""
    for msg in messages:
        try:
            yield request_from_proto(msg)
        except InvalidInput as e:
            yield FrameRequest(uri=msg.uri, frame_id=msg.frame_id, rejected=e)


def request_to_proto(uri: str, frame_id: str, opts: ScoreOptions) -> pb.ScoreRequest:
    return pb.ScoreRequest(uri=uri, frame_id=frame_id, options=options_to_proto(opts))


# -- results -------------------------------------------------------------------------------------

def _region_to_proto(r: Region) -> pb.Region:
    x, y, w, h = r.bbox
    return pb.Region(
        bbox=types_pb.BoundingBox(x=x, y=y, width=w, height=h),
        polygon=[types_pb.Point(x=int(px), y=int(py)) for px, py in r.polygon],
        rle=types_pb.CocoRle(height=r.rle["size"][0], width=r.rle["size"][1], uncompressed_counts=r.rle["counts"]),
        area=r.area, mean_eem=r.mean_eem, dominant_train_id=r.class_id, dominant_class=r.class_name)


def _region_from_proto(m: pb.Region) -> Region:
    return Region(bbox=(m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height),
                  polygon=[[p.x, p.y] for p in m.polygon],
                  rle={"size": [m.rle.height, m.rle.width], "counts": list(m.rle.uncompressed_counts)},
                  area=m.area, mean_eem=m.mean_eem, class_id=m.dominant_train_id,
                  class_name=m.dominant_class or (CLASS_NAMES[m.dominant_train_id]
                                                  if m.dominant_train_id < NUM_CLASSES else "ignore"))


def result_to_proto(r: ScoredFrame) -> pb.ScoreResult:
    """A result or a per-frame error (our exception mapped to its status code name here, at the edge)."""
    if r.error is not None:
        code, message = status_for(r.error)
        return pb.ScoreResult(frame_id=r.frame_id, uri=r.uri,
                              error=pb.FrameError(code=code.name, message=message))
    bits = _BITS_PB[r.map_bits]
    return pb.ScoreResult(
        frame_id=r.frame_id, uri=r.uri, score=r.score, height=r.height, width=r.width,
        model_versions=pb.ModelVersions(segmentation=r.model_versions.segmentation, depth=r.model_versions.depth),
        threshold=r.threshold,
        maps=[pb.Map(kind=_MAP_KIND_PB[k], bit_depth=bits, png=png) for k, png in r.maps_png.items()],
        regions=[_region_to_proto(x) for x in r.regions],
        labels_png=r.labels_png, latency_ms=r.latency_ms, cam_degenerate=r.cam_degenerate,
        cam_layer=r.cam_layer, class_names=list(r.class_names),
        embedding=np.asarray(r.embedding, np.float32).tolist(),
        class_histogram=np.asarray(r.class_histogram, np.float32).tolist())


def result_from_proto(m: pb.ScoreResult) -> ScoredFrame:
    if m.HasField("error"):
        code = getattr(grpc.StatusCode, m.error.code, None)
        return ScoredFrame(frame_id=m.frame_id, uri=m.uri, error=error_from_status(code, m.error.message))
    bits = {_BITS[mp.bit_depth] for mp in m.maps} or {8}
    return ScoredFrame(
        frame_id=m.frame_id, uri=m.uri, score=m.score, height=m.height, width=m.width,
        model_versions=ModelVersions(m.model_versions.segmentation, m.model_versions.depth),
        threshold=m.threshold,
        maps_png={_MAP_KIND[mp.kind]: mp.png for mp in m.maps if mp.kind in _MAP_KIND},
        map_bits=max(bits), regions=[_region_from_proto(x) for x in m.regions],
        labels_png=m.labels_png, latency_ms=m.latency_ms, cam_degenerate=m.cam_degenerate,
        cam_layer=m.cam_layer, class_names=tuple(m.class_names),
        embedding=np.asarray(m.embedding, np.float32), class_histogram=np.asarray(m.class_histogram, np.float32))


def stats_to_proto(s: Stats) -> pb.Stats:
    return pb.Stats(frames_scored=s.frames_scored, frames_failed=s.frames_failed, in_flight=s.in_flight,
                    latency_ms_mean=s.latency_ms_mean, latency_ms_p50=s.latency_ms_p50,
                    latency_ms_p95=s.latency_ms_p95, uptime_s=s.uptime_s,
                    frames_cam_degenerate=s.frames_cam_degenerate,
                    cam_health=[_cam_health_to_proto(h) for h in s.cam_health])


def stats_from_proto(m: pb.Stats) -> Stats:
    return Stats(m.frames_scored, m.frames_failed, m.in_flight, m.latency_ms_mean, m.latency_ms_p50,
                 m.latency_ms_p95, m.uptime_s, m.frames_cam_degenerate,
                 [_cam_health_from_proto(h) for h in m.cam_health])


def _cam_health_to_proto(h: CamHealth) -> pb.CamHealth:
    return pb.CamHealth(model_version=h.model_version, cam_layer=h.cam_layer, frames=h.frames,
                        frames_cam_dead=h.frames_dead, dead_share=h.dead_share,
                        cam_ebu_correlation=h.cam_ebu_correlation, cam_dead=h.cam_dead,
                        cam_confidence_map=h.cam_confidence_map)


def _cam_health_from_proto(m: pb.CamHealth) -> CamHealth:
    return CamHealth(m.model_version, m.cam_layer, m.frames, m.frames_cam_dead,
                     m.cam_ebu_correlation if m.HasField("cam_ebu_correlation") else None,
                     cam_dead=m.cam_dead, cam_confidence_map=m.cam_confidence_map)
