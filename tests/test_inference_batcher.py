"""The dynamic batcher on its own, with a plain numpy function as the model (its whole interface):
concurrent requests share executions, shapes never mix, the queue is bounded, expired requests
never reach the model, and close() finishes what was accepted."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from segxal.errors import InvalidInput, ResourceExhausted
from services.inference.batcher import Batcher, BatcherClosed, BatchPolicy, DeadlineExpired


class _Model:
    """y = 2x, recording the batch sizes it was run with."""

    def __init__(self, delay_s: float = 0.0):
        self.batches: list[int] = []
        self.delay_s = delay_s

    def __call__(self, feeds, names):
        self.batches.append(feeds["x"].shape[0])
        time.sleep(self.delay_s)
        return {"y": feeds["x"] * 2, "z": feeds["x"][:, :1]}


def _submit_all(batcher, arrays, deadline=None):
    results, errors = [None] * len(arrays), []

    def one(i):
        try:
            results[i] = batcher.submit({"x": arrays[i]}, None, arrays[i].shape[0], deadline)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_concurrent_requests_are_batched_and_split_back():
    model = _Model()
    b = Batcher(model, ["y", "z"], BatchPolicy(max_batch_size=8, max_queue_delay_s=0.2), "t/1")
    arrays = [np.full((r, 3), i, np.float32) for i, r in enumerate([1, 2, 1, 3])]
    results, errors = _submit_all(b, arrays)
    b.close()
    assert not errors
    assert sum(model.batches) == 7 and len(model.batches) < 4  # at least two requests shared a run
    stats = b.stats()
    assert (stats.inference_count, stats.execution_count, stats.success_count) == (7, len(model.batches), 4)
    assert sum(rows * n for rows, (n, _) in stats.batches.items()) == 7 and stats.queue_count == 4
    for a, r in zip(arrays, results):
        np.testing.assert_array_equal(r["y"], a * 2)
        assert r["z"].shape == (a.shape[0], 1)


def test_different_shapes_never_share_a_batch_and_max_batch_is_respected():
    model = _Model()
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=2, max_queue_delay_s=0.05), "t/1")
    arrays = [np.ones((1, 3), np.float32), np.ones((1, 4), np.float32)] * 3
    results, errors = _submit_all(b, arrays)
    b.close()
    assert not errors and max(model.batches) <= 2
    assert [r["y"].shape for r in results] == [a.shape for a in arrays]


class _Gate:
    """y = x, blocking every execution until released; `running` is set while one executes."""

    def __init__(self):
        self.running, self.release = threading.Event(), threading.Event()

    def __call__(self, feeds, names):
        self.running.set()
        self.release.wait(30)
        return {"y": feeds["x"]}


def test_bounded_queue_refuses_with_resource_exhausted():
    gate = _Gate()
    b = Batcher(gate, ["y"], BatchPolicy(max_batch_size=8, max_queue_delay_s=0.5, max_queue_size=2), "t/1")
    first = threading.Thread(target=b.submit, args=({"x": np.ones((1, 3), np.float32)}, None, 1, None))
    first.start()
    assert gate.running.wait(30)  # executing: the queue is empty again
    waiting = threading.Thread(target=lambda: _submit_all(b, [np.ones((1, 3), np.float32)] * 2))
    waiting.start()
    while b.queue_length() < 2:
        time.sleep(0.01)
    results, errors = _submit_all(b, [np.ones((1, 3), np.float32)] * 3)
    gate.release.set()
    first.join()
    waiting.join()
    b.close()
    assert len(errors) == 3 and all(isinstance(e, ResourceExhausted) for e in errors)
    assert "queue full" in str(errors[0])
    assert b.stats().success_count == 3


def test_expired_request_is_skipped_not_run():
    model = _Model(delay_s=0.3)
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=1), "t/1")
    slow = threading.Thread(target=b.submit, args=({"x": np.ones((1, 3), np.float32)}, None, 1, None))
    slow.start()
    time.sleep(0.05)  # the first request is running; the next one waits in the queue
    with pytest.raises(DeadlineExpired):
        b.submit({"x": np.ones((1, 3), np.float32)}, None, 1, time.monotonic() + 0.1)
    slow.join()
    b.close()
    assert model.batches == [1]  # the expired request never reached the model


def test_close_finishes_queued_requests_then_refuses():
    model = _Model(delay_s=0.05)
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=1), "t/1")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        b.submit({"x": np.ones((1, 3), np.float32)}, None, 1, None))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    b.close()
    for t in threads:
        t.join()
    assert len(results) == 4
    with pytest.raises(BatcherClosed):
        b.submit({"x": np.ones((1, 3), np.float32)}, None, 1, None)


def test_model_error_reaches_every_caller_of_the_batch_and_the_batcher_survives():
    def failing(feeds, names):
        if feeds["x"].shape[1] == 5:
            raise InvalidInput("bad width")
        return {"y": feeds["x"]}
    b = Batcher(failing, ["y"], BatchPolicy(max_batch_size=4, max_queue_delay_s=0.01), "t/1")
    with pytest.raises(InvalidInput, match="bad width"):
        b.submit({"x": np.ones((1, 5), np.float32)}, None, 1, None)
    assert b.submit({"x": np.ones((1, 3), np.float32)}, None, 1, None)["y"].shape == (1, 3)
    b.close()


def test_a_lone_caller_is_not_held_for_the_batching_window():
    """One request at a time (the single-stream case): after the first request (which waits for
    the company a fresh batcher assumes), each runs as soon as it is queued; the counters say no
    later batch waited for company."""
    model = _Model()
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=8, max_queue_delay_s=1.0), "t/1")
    for i in range(6):
        x = np.full((1, 3), i, np.float32)
        np.testing.assert_array_equal(b.submit({"x": x}, None, 1, None)["y"], x * 2)
    b.close()
    stats = b.stats()
    assert model.batches == [1] * 6 and stats.execution_count == 6
    assert stats.window_waits == 1  # the first request only


def test_a_lone_request_runs_in_its_callers_thread_and_instances_stay_the_limit():
    """No hand-off when a request would run alone: after the first request (which waits for
    company), a single stream executes in the caller's thread. With one instance, a request that
    arrives while another runs inline waits in the queue: never two executions at once."""
    lock, state, threads = threading.Lock(), {"now": 0, "most": 0}, []

    def model(feeds, names):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            threads.append(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return {"y": feeds["x"] * 2}
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=8, max_queue_delay_s=0.01), "t/1")
    for i in range(4):
        x = np.full((1, 3), i, np.float32)
        np.testing.assert_array_equal(b.submit({"x": x}, None, 1, None)["y"], x * 2)
    me = threading.current_thread().name
    assert threads[0].startswith("batcher-") and threads[1:] == [me] * 3, threads
    results, errors = _submit_all(b, [np.full((1, 3), i, np.float32) for i in range(6)])
    b.close()
    assert not errors and state["most"] == 1
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r["y"], np.full((1, 3), 2 * i, np.float32))


def test_callers_in_lock_step_form_batches_of_their_number():
    """N callers, each sending its next request when its answer comes back (a benchmark client
    at concurrency N): batches settle at N rows, the window closing when the last batch's number
    of rows is queued (a 1 s window absorbs scheduling jitter; nothing here measures time)."""
    model, n, rounds = _Model(delay_s=0.02), 4, 6
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=8, max_queue_delay_s=1.0), "t/1")

    def caller(i):
        for r in range(rounds):
            x = np.full((1, 3), 10 * i + r, np.float32)
            np.testing.assert_array_equal(b.submit({"x": x}, None, 1, None)["y"], x * 2)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    stats = b.stats()
    assert stats.inference_count == n * rounds and stats.fail_count == 0
    assert stats.batches.get(n, [0])[0] >= rounds - 2, stats.batches  # the first rounds settle it


def test_idle_instances_share_the_waiting_rows():
    """Two instances, four callers in lock step: an instance takes the waiting rows split among the
    idle instances, so batches of about two execute side by side instead of one batch of four
    while the other instance idles (on CPU, parallel small batches are faster)."""
    lock, state = threading.Lock(), {"now": 0, "most": 0}
    sizes: list[int] = []

    def model(feeds, names):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            sizes.append(feeds["x"].shape[0])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return {"y": feeds["x"] * 2}
    b = Batcher(model, ["y"], BatchPolicy(max_batch_size=8, max_queue_delay_s=1.0, instances=2), "t/1")

    def caller(i):
        for r in range(5):
            x = np.full((1, 3), 10 * i + r, np.float32)
            np.testing.assert_array_equal(b.submit({"x": x}, None, 1, None)["y"], x * 2)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert sum(sizes) == 20 and state["most"] == 2
    assert sizes[0] <= 2 and max(set(sizes), key=sizes.count) == 2, sizes  # never 4 rows on one instance first


def test_outputs_are_the_same_with_and_without_batching():
    """The rows a caller gets back are its own, whether its request ran alone or batched."""
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(r, 3)).astype(np.float32) for r in (1, 2, 1, 3, 1)]
    lone = Batcher(_Model(), ["y", "z"], BatchPolicy(max_batch_size=0), "t/1")  # no batching at all
    expected = [lone.submit({"x": a}, None, a.shape[0], None) for a in arrays]
    lone.close()
    model = _Model(delay_s=0.2)
    batched = Batcher(model, ["y", "z"], BatchPolicy(max_batch_size=8, max_queue_delay_s=0.5), "t/1")
    results, errors = _submit_all(batched, arrays)
    batched.close()
    assert not errors and max(model.batches) > 1  # some really were batched
    for r, e in zip(results, expected):
        for k in ("y", "z"):
            np.testing.assert_array_equal(r[k], e[k])
