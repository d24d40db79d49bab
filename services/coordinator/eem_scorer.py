"""The ranking's scorer over the EEM scoring service (services.eem.client): one ScoreStream call
per chunk of frames, with the chunk's deadline, labels and regions asked for."""
from __future__ import annotations

from typing import Iterator, Sequence

from segxal.annotation import Rle
from services.common.channel import ChannelConfig
from services.coordinator.domain import FrameScore, TaskRegion
from services.eem.api import ScoredFrame
from services.eem.api import ScoreOptions
from services.eem.client import EemClient


def _region(i: int, r) -> TaskRegion:
    """segxal.eem.regions.Region -> the coordinator's Region (RLE kept in COCO's uncompressed form)."""
    h, w = r.rle["size"]
    return TaskRegion(region_id=i, bbox=tuple(int(v) for v in r.bbox),
                  polygon=tuple((int(p[0]), int(p[1])) for p in r.polygon),
                  rle=Rle(int(h), int(w), "", tuple(int(c) for c in r.rle["counts"])),
                  area=int(r.area), mean_eem=float(r.mean_eem), dominant_train_id=int(r.class_id),
                  dominant_class=r.class_name)


def frame_score_from_eem(frame: ScoredFrame) -> FrameScore:
    return FrameScore(uri=frame.uri, score=float(frame.score),
                      segmentation_version=frame.model_versions.segmentation,
                      depth_version=frame.model_versions.depth,
                      regions=tuple(_region(i, r) for i, r in enumerate(frame.regions)),
                      height=int(frame.height), width=int(frame.width),
                      prediction_png=frame.labels_png or None, class_names=tuple(frame.class_names),
                      embedding=frame.embedding if len(frame.embedding) else None,
                      class_hist=frame.class_histogram if len(frame.class_histogram) else None)


class EemScorer:
    """FrameScorer (services.coordinator.ranking) backed by the EEM service; a context manager.

    Args:
        target: the EEM service, "host:port" or a replica list (services.common.channel).
        channel_cfg: TLS / mTLS / token to it.
    The EEM maths come with each call (options.eem: the cycle's options), passed through as given.
    """

    def __init__(self, target: str, channel_cfg: ChannelConfig | None = None):
        self.target = target
        self._client = EemClient(target, channel_cfg)

    def __enter__(self) -> "EemScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def score_many(self, uris: Sequence[str], options: ScoreOptions,
                   deadline_s: float) -> Iterator[tuple[str, FrameScore | Exception]]:
        """(uri, FrameScore or that frame's error) as results arrive; raises (NotReady...) when the
        stream as a whole fails, after the results that did arrive."""
        # Tag each request with its index: results come back in completion order.
        refs = [(str(i), uri) for i, uri in enumerate(uris)]
        for frame in self._client.score_stream(refs, options, timeout_s=deadline_s):
            uri = uris[int(frame.frame_id)]
            yield uri, (frame.error if frame.error is not None else frame_score_from_eem(frame))
