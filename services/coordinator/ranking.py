"""Ranking a pool: fan frames out to a scorer with bounded concurrency, per-call deadlines and
retries with exponential backoff, keeping only the top K in memory (a min-heap).

The scorer is anything with `score_many(uris, options, deadline_s) -> iterator of (uri, FrameScore | Exception)`
(the EEM service's client, through services/coordinator/eem_scorer.py). Results are recorded as they
arrive (`on_scored`), each under the model version that produced it, and only results of the
expected version enter the heap: when the EEM service reloads a new model mid-ranking, the frames it
scores with the new version are kept for that version and reported as failed for this cycle, never
ranked against the old version's scores.

Which errors are retried: a scorer that is down, overloaded or slow (NotReady - UNAVAILABLE and
DEADLINE_EXCEEDED map to it - ResourceExhausted, and unexpected errors) gets the frame retried after
backoff_initial_s * backoff_multiplier ** (attempt - 1), capped at backoff_max_s, with +-50 % jitter
so a restarted scorer is not hit by every worker at once. A frame the scorer rejects (InvalidInput,
NotFound, PermissionDenied, FailedPrecondition) fails at once: retrying cannot fix it.
"""
from __future__ import annotations

import heapq
import logging
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from segxal.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from services.coordinator.domain import Candidate, FailedFrame, FrameScore
from services.eem.api import ScoreOptions

log = logging.getLogger(__name__)

_PERMANENT = (InvalidInput, NotFound, PermissionDenied, FailedPrecondition)


class FrameScorer(Protocol):
    def score_many(self, uris: Sequence[str], options: ScoreOptions, deadline_s: float
                   ) -> Iterator[tuple[str, FrameScore | Exception]]:
        """Score frames with the EEM service's options (the cycle's EEM maths and what to send
        back); one (uri, result or the frame's error) per uri, in any order. May raise (e.g.
        NotReady) when the whole call fails."""
        ...


@dataclass
class RankingConfig:
    concurrency: int = 4          # score_many calls in flight at once
    chunk_size: int = 8           # frames per score_many call
    deadline_s: float = 60.0      # per call; a frame of 1024 x 2048 on CPU takes ~1 s to score
    max_attempts: int = 4         # per frame, first try included
    backoff_initial_s: float = 0.2
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 5.0
    record_batch: int = 64        # scores written to the store per transaction

    def backoff_s(self, attempt: int) -> float:
        """Delay before try number attempt + 1 (attempt >= 1), jittered +-50 %."""
        base = min(self.backoff_initial_s * self.backoff_multiplier ** (attempt - 1), self.backoff_max_s)
        return base * random.uniform(0.5, 1.5)


@dataclass(order=True)
class Ranked:
    """A heap entry: ordered by score, then frame_id so ties break the same way every run."""
    score: float
    frame_id: str
    candidate: Candidate = field(compare=False)
    result: FrameScore = field(compare=False)


@dataclass
class RankOutcome:
    top: list[Ranked]          # best first, at most k
    scored: int = 0            # scored by the scorer during this ranking, in the expected version
    reused: int = 0            # came with a score of the expected version
    failed: int = 0            # passed to on_failed


class TopK:
    """The k best (score, frame) pairs seen so far; memory O(k) whatever the pool size."""

    def __init__(self, k: int):
        self.k = k
        self._heap: list[Ranked] = []  # min-heap: the weakest kept entry on top

    def offer(self, entry: Ranked) -> None:
        if self.k <= 0:
            return
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def best_first(self) -> list[Ranked]:
        return sorted(self._heap, reverse=True)


class _All:
    """TopK's interface, keeping every entry (prediction PNGs dropped: memory per frame stays small)."""

    def __init__(self):
        self._all: list[Ranked] = []

    def offer(self, entry: Ranked) -> None:
        if entry.result.prediction_png is not None:
            entry = Ranked(entry.score, entry.frame_id, entry.candidate, replace(entry.result, prediction_png=None))
        self._all.append(entry)

    def best_first(self) -> list[Ranked]:
        return sorted(self._all, reverse=True)


@dataclass
class _Chunk:
    items: list[Candidate]
    attempt: int = 1           # the try this chunk is on
    not_before: float = 0.0    # monotonic time before which it must not be sent


def _error_text(e: BaseException) -> str:
    return str(e) or type(e).__name__


def score_candidates(candidates: Iterable[Candidate], scorer: FrameScorer, options: ScoreOptions,
                     cfg: RankingConfig) -> Iterator[tuple[Candidate, FrameScore | FailedFrame]]:
    """Score every candidate, yielding (candidate, result) as results arrive; a frame that still
    fails after cfg.max_attempts (or fails permanently) yields a FailedFrame. Candidates are pulled
    lazily, so at most concurrency * chunk_size frames are in flight."""
    source = iter(candidates)
    source_done = False
    retry: list[_Chunk] = []  # kept sorted by not_before
    in_flight: dict[Future, _Chunk] = {}

    def next_chunk() -> _Chunk | None:
        nonlocal source_done
        if retry and retry[0].not_before <= time.monotonic():
            return retry.pop(0)
        if source_done:
            return None
        items = []
        for cand in source:
            items.append(cand)
            if len(items) == cfg.chunk_size:
                break
        else:
            source_done = True
        return _Chunk(items) if items else None

    def call(chunk: _Chunk) -> dict[str, FrameScore | Exception]:
        results: dict[str, FrameScore | Exception] = {}
        try:
            for uri, res in scorer.score_many([c.uri for c in chunk.items], options, cfg.deadline_s):
                results[uri] = res
        except Exception as e:  # noqa: BLE001 - the call broke: frames without a result get its error
            for c in chunk.items:
                results.setdefault(c.uri, e)
        return results

    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="rank") as pool:
        while True:
            while len(in_flight) < cfg.concurrency:
                chunk = next_chunk()
                if chunk is None:
                    break
                in_flight[pool.submit(call, chunk)] = chunk
            if not in_flight:
                if not retry and source_done:
                    return
                time.sleep(max(0.0, min(c.not_before for c in retry) - time.monotonic()))
                continue
            # Wake up for a finished call, or when a retry becomes due.
            timeout = (max(0.0, min(c.not_before for c in retry) - time.monotonic())
                       if retry and len(in_flight) < cfg.concurrency else None)
            done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in done:
                chunk = in_flight.pop(fut)
                results = fut.result()
                again = []
                for cand in chunk.items:
                    res = results.get(cand.uri)
                    if res is None:
                        res = FailedPrecondition(f"{cand.uri}: the scorer returned no result for this frame")
                    if isinstance(res, FrameScore):
                        yield cand, res
                    elif isinstance(res, _PERMANENT) or chunk.attempt >= cfg.max_attempts:
                        yield cand, FailedFrame(cand.frame_id, cand.uri, _error_text(res), chunk.attempt)
                    else:
                        again.append(cand)
                if again:
                    delay = cfg.backoff_s(chunk.attempt)
                    log.info("scoring %d frames failed (try %d), retrying in %.2fs: %s", len(again),
                             chunk.attempt, delay, _error_text(results[again[0].uri]))
                    retry.append(_Chunk(again, chunk.attempt + 1, time.monotonic() + delay))
                    retry.sort(key=lambda c: c.not_before)


def rank_frames(candidates: Iterable[Candidate], scorer: FrameScorer | None, k: int | None, expected_version: str,
                cfg: RankingConfig, options: ScoreOptions,
                on_scored: Callable[[list[tuple[str, FrameScore]]], None] = lambda batch: None,
                on_failed: Callable[[list[FailedFrame]], None] = lambda batch: None) -> RankOutcome:
    """The top k candidates by score under `expected_version` ("<model>:<version>"); k None: every
    candidate, best first, without prediction PNGs (a composed selection's input: it needs every
    frame's score and features, and fetches the winners' predictions afterwards).

    Candidates that already carry a score of that version are ranked without scoring. Every new
    score goes to on_scored and every failure to on_failed, in batches as they happen, so memory
    holds the heap and a batch, never the pool. A score of another version is passed on (it is
    valid for that version) and the frame counts as failed for this ranking.
    """
    if scorer is None:
        raise FailedPrecondition("ranking needs a scorer: start the coordinator with --eem-target")
    top: TopK | _All = TopK(k) if k is not None else _All()
    outcome = RankOutcome(top=[])
    scored: list[tuple[str, FrameScore]] = []
    failed: list[FailedFrame] = []

    def to_score() -> Iterator[Candidate]:
        for cand in candidates:
            if cand.cached is not None and cand.cached.segmentation_version == expected_version:
                outcome.reused += 1
                top.offer(Ranked(cand.cached.score, cand.frame_id, cand, cand.cached))
            else:
                yield cand

    def flush(force: bool = False) -> None:
        if scored and (force or len(scored) >= cfg.record_batch):
            on_scored(list(scored))
            scored.clear()
        if failed and (force or len(failed) >= cfg.record_batch):
            on_failed(list(failed))
            outcome.failed += len(failed)
            failed.clear()

    for cand, res in score_candidates(to_score(), scorer, options, cfg):
        if isinstance(res, FailedFrame):
            failed.append(res)
        else:
            scored.append((cand.frame_id, res))
            if res.segmentation_version != expected_version:
                failed.append(FailedFrame(
                    cand.frame_id, cand.uri,
                    f"scored by model {res.segmentation_version or '(unnamed)'}, this cycle ranks with "
                    f"{expected_version}: the scorer serves another version", 1))
            else:
                outcome.scored += 1
                top.offer(Ranked(res.score, cand.frame_id, cand, res))
        flush()
    flush(force=True)
    outcome.top = top.best_first()
    return outcome
