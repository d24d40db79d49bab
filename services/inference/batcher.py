"""Dynamic batching of concurrent requests for one model version (Triton's dynamic batcher, in
small): requests queue up; an instance thread takes the oldest, waits up to `max_queue_delay_s`
for more requests of the same shape, concatenates up to `max_batch_size` rows, runs the model once
and hands each caller its slice.

- The wait for company is adaptive: it ends as soon as the queue holds as many rows as the
  previous batch had (the concurrency the callers showed last time; before the first batch, a
  full batch), so a lone caller is held for the window at most once, for its first request (its
  batch had 1 row: nothing to wait for after that), and N callers in lock-step form
  batches of N without waiting out the window. Measured why (bench/infer_overhead.py): a fixed
  2 ms window cost a single stream ~2 ms a frame for nothing, and at concurrency 4 the window
  closed on time before the callers of the last batch were back, forming batches of ~2.

- A request that would run alone anyway (nothing queued, an instance idle, and the last batch had
  no more rows than it, so there is no company to wait for) runs in the caller's own thread: no
  hand-off to an instance thread and back, two thread wake-ups less per request at concurrency 1.
  It counts as one of the `instances` executing, so at most `instances` batches run at once.
- The queue is bounded: past `max_queue_size` waiting requests, `submit` raises ResourceExhausted.
- Deadlines: a request whose deadline has passed is dropped before it reaches the model, and its
  caller stops waiting at the deadline.
- `close()` refuses new requests and finishes every queued one before the threads exit, so a
  version swapped out (hot reload) or a server stopping drops nothing it accepted.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from segxal.errors import NotReady, ResourceExhausted
from services.common.errors import DeadlineExceeded

log = logging.getLogger(__name__)


class BatcherClosed(NotReady):
    """The batcher stopped taking requests (its version was swapped out); resolve the version again."""


class DeadlineExpired(DeadlineExceeded):
    """The request's deadline passed before the model ran it (DEADLINE_EXCEEDED at the edge)."""


@dataclass
class BatchPolicy:
    max_batch_size: int = 8  # rows per execution; 0 = the model has no batch dimension, no batching
    max_queue_delay_s: float = 0.002  # how long the oldest request may wait for company
    max_queue_size: int = 64  # waiting requests (not rows); more are refused
    instances: int = 1  # threads executing batches in parallel


@dataclass
class BatcherStats:
    """Cumulative counters in Triton's ModelStatistics terms (durations in ns)."""
    inference_count: int = 0  # requests' rows executed
    execution_count: int = 0  # model executions (one per batch)
    success_count: int = 0
    success_ns: int = 0  # submit -> result, per successful request
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0  # submit -> its batch starts executing
    compute_count: int = 0
    compute_ns: int = 0  # execution time of the batch, counted for each request in it
    last_inference_ms: int = 0  # wall-clock ms since the epoch
    batches: dict[int, list[int]] = field(default_factory=dict)  # rows -> [executions, ns]
    # batches whose first request waited for company (the rest ran as soon as an instance was free)
    window_waits: int = 0


class _Pending:
    __slots__ = ("inputs", "outputs", "rows", "key", "deadline", "enqueued", "done", "result", "error")

    def __init__(self, inputs: dict[str, np.ndarray], outputs: list[str] | None, rows: int,
                 deadline: float | None, batched: bool):
        self.inputs = inputs
        self.outputs = outputs
        self.rows = rows
        # requests batch together only when every non-batch dimension and dtype agree
        self.key = tuple((n, a.shape[1:] if batched else a.shape, a.dtype.str) for n, a in sorted(inputs.items()))
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


class Batcher:
    """Queue + instance threads in front of one model's `run(feeds, output_names)`.

    Args:
        run: executes feeds (batch first) and returns the named outputs.
        output_names: all outputs of the model, in config order (the default when none are requested).
        policy: batching limits.
        name: for thread names and logs, e.g. "segmentation/3".
    """

    def __init__(self, run: RunFn, output_names: list[str], policy: BatchPolicy, name: str):
        self._run = run
        self._all_outputs = list(output_names)
        self.policy = policy
        self.name = name
        self._batching = policy.max_batch_size > 0
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._flushing = False  # shutting down: run queued requests without waiting for company
        self._busy = 0  # instances executing a batch
        # rows of the last batch: how many to wait for (module doc); until a batch has run, a full one
        self._expected_rows = max(1, policy.max_batch_size)
        self._stats = BatcherStats()
        self._stats_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._instance_loop, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(max(1, policy.instances))]
        for t in self._threads:
            t.start()

    def submit(self, inputs: dict[str, np.ndarray], outputs: list[str] | None, rows: int,
               deadline: float | None) -> dict[str, np.ndarray]:
        """Queue a request and wait for its outputs.

        Args:
            inputs: name -> array, already checked against the model (batch first when batched).
            outputs: requested names, None = all.
            rows: the request's batch size.
            deadline: time.monotonic() after which the caller no longer waits.

        Returns:
            name -> this request's slice of each output.

        Raises:
            BatcherClosed: closed before the request was queued (nothing ran).
            ResourceExhausted: the queue holds max_queue_size requests already.
            DeadlineExpired: the deadline passed first.
            Whatever the model raised for the batch holding this request.
        """
        pending = _Pending(inputs, outputs, rows, deadline, self._batching)
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name}: no longer accepting requests")
            if len(self._queue) >= self.policy.max_queue_size:
                raise ResourceExhausted(f"model {self.name}: queue full ({self.policy.max_queue_size} "
                                        f"requests waiting); retry later")
            inline = self._runs_alone(rows)
            if inline:
                self._busy += 1
                self._expected_rows = max(1, rows)
            else:
                self._queue.append(pending)
                self._cond.notify_all()
        if inline:
            try:
                self._execute([pending])
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()  # an instance may be waiting for a free slot
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self._wait(pending, timeout)
        except Exception:
            self._count_outcome(pending, ok=False)
            raise

    def _runs_alone(self, rows: int) -> bool:
        """(Holding the condition.) Would this request run alone now, without waiting for company?"""
        if self._queue or self._busy >= len(self._threads):
            return False
        return not self._batching or rows >= min(self._expected_rows, self.policy.max_batch_size)

    def _wait(self, pending: _Pending, timeout: float | None) -> dict[str, np.ndarray]:
        if not pending.done.wait(timeout):
            with self._cond:
                try:
                    self._queue.remove(pending)  # free its queue slot; if running, its result is dropped
                    self._cond.notify_all()  # it may have been the head an instance waits on
                except ValueError:
                    pass
            raise DeadlineExpired(f"model {self.name}: deadline passed while waiting for execution")
        if pending.error is not None:
            raise pending.error
        self._count_outcome(pending, ok=True)
        return pending.result

    def _count_outcome(self, pending: _Pending, ok: bool) -> None:
        ns = int((time.monotonic() - pending.enqueued) * 1e9)
        with self._stats_lock:
            if ok:
                self._stats.success_count += 1
                self._stats.success_ns += ns
            else:
                self._stats.fail_count += 1
                self._stats.fail_ns += ns

    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return replace(self._stats, batches={k: list(v) for k, v in self._stats.batches.items()})

    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self) -> None:
        """Stop holding requests back for batching (shutdown: finish in-flight work quickly);
        requests are still accepted."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued and running ones, stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        with self._cond:  # requests running in their callers' threads
            end = None if timeout is None else time.monotonic() + timeout
            while self._busy and (end is None or time.monotonic() < end):
                self._cond.wait(None if end is None else max(0.0, end - time.monotonic()))

    # ---- instance threads ----

    def _take_batch(self) -> list[_Pending] | None:
        """Wait for work and take one batch of compatible requests (None: closed and drained)."""
        p = self.policy
        with self._cond:
            while True:
                # an instance slot may be taken by a request running in its caller's thread
                while not self._queue or self._busy >= len(self._threads):
                    if self._closed and not self._queue:
                        return None
                    self._cond.wait()
                first = self._queue[0]
                if self._batching and not (self._closed or self._flushing) and not self._window_closes(first):
                    continue  # the head left (expired, or another instance took it): start over
                break
            batch, rows, keep = [], 0, deque()
            cap = self._share(first)
            while self._queue:
                q = self._queue.popleft()
                if (not batch) or (self._batching and q.key == first.key and rows + q.rows <= cap):
                    batch.append(q)
                    rows += q.rows
                else:
                    keep.append(q)
                if not self._batching or rows >= cap:
                    break
            keep.extend(self._queue)
            self._queue = keep
            self._expected_rows = max(1, rows)
            self._busy += 1
            if self._queue:
                self._cond.notify_all()  # work left for another instance
            return batch

    def _share(self, first: _Pending) -> int:
        """Rows this instance takes: the waiting rows split evenly among the idle instances (this one
        included), at most max_batch_size. On CPU, parallel runs of small batches beat one large
        batch while the other instances idle (bench/infer_overhead.py: batches of 4 and 8 on one
        instance gave 10-20 % fewer frames/s than batches of ~2 on two)."""
        waiting = sum(q.rows for q in self._queue if q.key == first.key)
        idle = max(1, len(self._threads) - self._busy)
        return min(self.policy.max_batch_size, max(1, -(-waiting // idle)))

    def _window_closes(self, first: _Pending) -> bool:
        """Wait (holding the condition) until `first`'s batch has the rows the last batch had (at
        most max_batch_size) or its delay is over: True; False if `first` stopped being the head of
        the queue meanwhile."""
        flush_at = first.enqueued + self.policy.max_queue_delay_s
        waited = False
        while not (self._closed or self._flushing):
            if not self._queue or self._queue[0] is not first:
                return False
            rows = sum(q.rows for q in self._queue if q.key == first.key)
            remaining = flush_at - time.monotonic()
            if rows >= min(self._expected_rows, self.policy.max_batch_size) or remaining <= 0:
                if waited:
                    with self._stats_lock:
                        self._stats.window_waits += 1
                return True
            waited = True
            self._cond.wait(remaining)
        return bool(self._queue)  # closing or flushing: run what is queued without waiting

    def _count_execution(self, live: list[_Pending], started: float, finished: float) -> None:
        rows = sum(q.rows for q in live)
        compute_ns = int((finished - started) * 1e9)
        with self._stats_lock:
            st = self._stats
            st.execution_count += 1
            st.inference_count += rows
            st.queue_count += len(live)
            st.queue_ns += sum(int((started - q.enqueued) * 1e9) for q in live)
            st.compute_count += len(live)
            st.compute_ns += compute_ns * len(live)
            st.last_inference_ms = int(time.time() * 1e3)
            batch = st.batches.setdefault(rows, [0, 0])
            batch[0] += 1
            batch[1] += compute_ns

    def _instance_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                if batch:
                    self._execute(batch)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()  # another instance may be waiting for a free slot

    def _execute(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        live = []
        for q in batch:
            if q.deadline is not None and q.deadline <= now:
                q.error = DeadlineExpired(f"model {self.name}: deadline passed in the queue; not run")
                q.done.set()
            else:
                live.append(q)
        if not live:
            return
        wanted = set()
        for q in live:
            wanted.update(q.outputs or self._all_outputs)
        names = [n for n in self._all_outputs if n in wanted]
        if len(live) == 1:
            feeds = live[0].inputs  # no copy for a lone request
        else:
            feeds = {n: np.concatenate([q.inputs[n] for q in live]) for n in live[0].inputs}  # [rows, ...]
        started = time.monotonic()
        try:
            out = self._run(feeds, names)
        except BaseException as e:  # noqa: BLE001 - handed to every caller of the batch
            if not isinstance(e, Exception):
                raise
            for q in live:
                q.error = e
                q.done.set()
            return
        self._count_execution(live, started, time.monotonic())
        start = 0
        for q in live:
            stop = start + q.rows if self._batching else start
            # slices along the batch axis of C-contiguous arrays are contiguous views: no copy
            q.result = {n: (out[n][start:stop] if self._batching else out[n]) for n in (q.outputs or names)}
            start = stop
            q.done.set()
