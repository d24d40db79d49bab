"""The labeling clients' one library over the coordinator API (services.coordinator.client): lease
tasks, keep their leases alive from a background thread while the work goes on, submit, and give
a task back when the work fails.

    cfg = LabelingConfig(coordinator="localhost:50061", pool="drive-2026-11", client_id="me")
    with LabelingSession(cfg) as session:
        for lease in session.lease(max_tasks=4):
            with lease:                       # an exception inside releases the task, then re-raises
                labels = ...                  # trainIds uint8 [H, W], 255 = not annotated
                lease.submit(labels)          # leaving the block without submitting releases it

    work(session, annotate)                   # the loop every oracle runs: lease, annotate, submit

Every client (machine oracle, simulated human, the Label Studio bridge) goes through here, so
leases are handled one way. One heartbeat thread per session extends every held lease each
`heartbeat_s`; a lease the coordinator refuses to extend (taken over after it expired, task
cancelled or already annotated) is marked lost, and submitting it raises FailedPrecondition with
the coordinator's reason.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from segxal.al.oracles import Cost
from segxal.annotation import Rle, decode_rle
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, SegxalError
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.common.channel import ChannelConfig
from services.coordinator.client import CoordinatorClient, pool_class_names

log = logging.getLogger(__name__)

MAX_LEASE_BATCH = 64  # the coordinator's default cap on tasks per LeaseTasks call


@dataclass
class LabelingConfig:
    coordinator: str = "127.0.0.1:50061"  # host:port, "h1:p1,h2:p2" or dns:///svc:port
    pool: str = ""  # pool id or name
    cycle_id: str = ""  # lease from this cycle only; empty: any cycle of the pool
    client_id: str = ""  # lease holder's name; empty: "<kind>@<host>:<pid>"
    # A person annotating a frame by hand takes minutes; oracles take seconds. Heartbeats keep a
    # lease alive however long the work takes, so the lease only bounds how long a crashed client
    # hides its tasks.
    lease_s: float = 300.0
    heartbeat_s: float = 0.0  # 0: lease_s / 3 (two heartbeats may fail before the lease lapses)
    timeout_s: float = 30.0  # deadline of each coordinator call
    channel: ChannelConfig = field(default_factory=ChannelConfig)

    def heartbeat_interval(self) -> float:
        return self.heartbeat_s if self.heartbeat_s > 0 else self.lease_s / 3.0


def default_client_id(kind: str) -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


class Lease:
    """One leased task. A context manager: leaving it by an exception releases the task and lets the
    exception through; leaving it without having submitted releases it too.

    Attributes:
        task: the coordinator's Task (with its lease_token).
        lost: why the coordinator refused a heartbeat (the lease is gone), else None.
    """

    def __init__(self, session: "LabelingSession", task: pb.Task):
        self.session = session
        self.task = task
        self.lost: SegxalError | None = None
        self.expires_unix_s = task.lease_expires_unix_s
        self._finished = False  # submitted or released: no more heartbeats, nothing to give back
        # Heartbeats (session thread) and submit / release (caller) take turns, so a heartbeat never
        # reaches a task this client has just finished and mistakes it for a lost lease.
        self._lock = threading.Lock()

    @property
    def task_id(self) -> str:
        return self.task.task_id

    @property
    def finished(self) -> bool:
        return self._finished

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._finished:
            return
        if exc is not None:
            log.warning("task %s: releasing after %s: %s", self.task_id, exc_type.__name__, exc)
        self.release(quiet=True)

    def submit(self, labels: np.ndarray, *, region_ids: Sequence[int] = (),
               idempotency_key: str = "") -> pb.SubmitAnnotationResponse:
        """Submit the annotation (trainIds uint8 [H, W], 255 = not annotated) and end the lease.

        Args:
            labels: the annotation in trainIds.
            region_ids: the task regions fixed; empty = a whole-frame annotation.
            idempotency_key: same key = same annotation; empty: the content is the key.

        Raises:
            FailedPrecondition: the lease was lost (the message says why) or the task holds another
                annotation. InvalidInput: the coordinator refused the mask (size, empty, ids).
            NotReady: the coordinator cannot be reached; the lease is still held, so retrying is safe.
        """
        with self._lock:
            if self.lost is not None:
                raise FailedPrecondition(f"task {self.task_id}: lease lost before submit ({self.lost})")
            if self._finished:
                raise FailedPrecondition(f"task {self.task_id}: already submitted or released")
            reply = self.session.client.submit(self.task, labels, region_ids=region_ids,
                                               idempotency_key=idempotency_key)
            self._end()
        return reply

    def release(self, quiet: bool = False) -> None:
        """Give the task back to the queue at once.

        Args:
            quiet: log instead of raising when the coordinator refuses (the lease was lost already)
                or cannot be reached (the lease then lapses by itself).
        """
        with self._lock:
            if self._finished:
                return
            try:
                self.session.client.release(self.task)
            except SegxalError as e:
                if not quiet:
                    raise
                log.warning("task %s: release failed (the lease lapses by itself): %s", self.task_id, e)
            finally:
                self._end()

    def heartbeat(self) -> None:
        """Extend the lease by the session's lease_s (nothing once submitted or released).

        Raises:
            FailedPrecondition / NotFound: the lease is gone (also recorded in `lost`).
            NotReady: the coordinator cannot be reached.
        """
        with self._lock:
            if self._finished:
                return
            try:
                self.expires_unix_s = self.session.client.heartbeat(self.task, self.session.cfg.lease_s)
            except (FailedPrecondition, NotFound) as e:
                self.lost = e
                self._end()
                raise

    def _end(self) -> None:
        self._finished = True
        self.session._forget(self)


class LabelingSession:
    """A labeling client's connection to the coordinator: leases, heartbeats, submits.

    Args:
        cfg: coordinator, pool, lease length, client id.
        on_lost: called (from the heartbeat thread) with a lease whose heartbeat the coordinator
            refused; `lease.lost` says why.
        release_on_close: release the leases still held when the session closes (oracles); the Label
            Studio bridge keeps them, since its tasks wait in Label Studio across restarts.
        kind: names the client in the default client id.

    Raises:
        NotFound: no such pool. NotReady: the coordinator cannot be reached.
    """

    def __init__(self, cfg: LabelingConfig, *, on_lost: Callable[[Lease], None] | None = None,
                 release_on_close: bool = True, kind: str = "labeler"):
        if not cfg.pool:
            raise InvalidInput("labeling: name the pool (its id or name)")
        if cfg.lease_s <= 0:
            raise InvalidInput(f"labeling: lease_s must be > 0, got {cfg.lease_s}")
        self.cfg = cfg
        self.client_id = cfg.client_id or default_client_id(kind)
        self.client = CoordinatorClient(cfg.coordinator, cfg.channel, client_id=self.client_id,
                                        timeout_s=cfg.timeout_s)
        self._on_lost = on_lost
        self._release_on_close = release_on_close
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            pool = self._resolve_pool(cfg.pool)
        except BaseException:
            self.client.close()
            raise
        self.pool_id = pool.pool_id
        self.class_names = pool_class_names(pool)  # what a label mask's class ids mean, index = id
        self._heartbeats = threading.Thread(target=self._heartbeat_loop, name="lease-heartbeat", daemon=True)
        self._heartbeats.start()

    def _resolve_pool(self, pool: str) -> pb.Pool:
        """A pool id, or a pool name."""
        try:
            return self.client.get_pool(pool)
        except NotFound:
            pass
        try:
            return self.client.get_pool(name=pool)
        except NotFound:
            raise NotFound(f"labeling: no pool with id or name {pool!r} at {self.cfg.coordinator}") from None

    def __enter__(self) -> "LabelingSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop heartbeating; release the leases still held when release_on_close; close the channel."""
        self._stop.set()
        self._heartbeats.join(timeout=self.cfg.timeout_s)
        if self._release_on_close:
            for lease in self.held():
                lease.release(quiet=True)
        self.client.close()

    # ---- leases
    def lease(self, max_tasks: int = 1) -> list[Lease]:
        """Lease up to max_tasks tasks (best first); [] when none waits or the budget is spent.

        Raises:
            NotReady: the coordinator cannot be reached. InvalidInput: max_tasks out of range.
        """
        reply = self.client.lease_tasks(self.pool_id, max_tasks, self.cfg.lease_s, cycle_id=self.cfg.cycle_id)
        if reply.budget_exhausted:
            log.info("pool %s: labeling budget spent, no task leased", self.pool_id)
        return [self.adopt(task) for task in reply.tasks]

    def adopt(self, task: pb.Task) -> Lease:
        """Hold (and heartbeat) a task leased earlier, e.g. by this client before a restart; the
        task must carry its lease_token."""
        if not task.lease_token:
            raise InvalidInput(f"task {task.task_id}: no lease token to adopt")
        lease = Lease(self, task)
        with self._lock:
            self._held[task.task_id] = lease
        return lease

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def get(self, task_id: str) -> Lease | None:
        with self._lock:
            return self._held.get(task_id)

    def _forget(self, lease: Lease) -> None:
        with self._lock:
            if self._held.get(lease.task_id) is lease:
                del self._held[lease.task_id]

    def _heartbeat_loop(self) -> None:
        interval = self.cfg.heartbeat_interval()
        while not self._stop.wait(interval):
            for lease in self.held():
                if self._stop.is_set():
                    return
                try:
                    lease.heartbeat()
                except (FailedPrecondition, NotFound) as e:
                    log.warning("task %s: lease lost: %s", lease.task_id, e)
                    if self._on_lost is not None:
                        self._on_lost(lease)
                except SegxalError as e:  # coordinator down: try again next round
                    log.warning("task %s: heartbeat failed, retrying in %.1fs: %s", lease.task_id, interval, e)


def region_masks(task: pb.Task) -> list[np.ndarray]:
    """The task's regions to fix as bool masks [H, W], in region order.

    Raises:
        InvalidInput: a region's RLE does not cover the frame.
    """
    return [decode_rle(Rle(r.rle.height, r.rle.width, r.rle.counts, tuple(r.rle.uncompressed_counts)),
                       where=f"task {task.task_id} region {r.region_id}")
            for r in task.regions]


# ---------------------------------------------------------------- the oracles' loop

@dataclass
class Answer:
    """An oracle's annotation of one task."""
    labels: np.ndarray  # trainIds uint8 [H, W], 255 = not annotated
    region_ids: tuple[int, ...] = ()  # regions fixed; empty = whole frame
    cost: Cost = field(default_factory=Cost)


@dataclass
class Decline:
    """An oracle cannot annotate this task (nothing confident, every region skipped...): the task is
    released for someone else."""
    reason: str


@dataclass
class WorkSummary:
    submitted: int = 0
    released: int = 0
    cost: Cost = field(default_factory=Cost)
    errors: list[str] = field(default_factory=list)  # "<task_id>: <why it was released>"

    def to_dict(self) -> dict:
        return {"submitted": self.submitted, "released": self.released, "cost": self.cost.to_dict(),
                "errors": self.errors}


def work(session: LabelingSession, annotate: Callable[[Lease], Answer | Decline], *, max_tasks: int = 0,
         follow: bool = False, idle_s: float = 5.0, stop: threading.Event | None = None) -> WorkSummary:
    """Lease one task at a time, annotate it, submit it; release it when the oracle declines or fails.

    A task this loop released is not taken again in the same run (the coordinator would hand it
    straight back, best first): the loop leases past it and gives it back.

    Args:
        annotate: the oracle: an Answer, or a Decline with its reason. A SegxalError it raises
            releases the task and is recorded; any other exception releases it and propagates.
        max_tasks: stop after this many tasks (submitted or released); 0: no limit.
        follow: when no task waits, wait idle_s and ask again (until `stop` is set); else return.
        stop: set it to end the loop after the current task.

    Returns:
        what was submitted and released, and the summed cost.
    """
    summary = WorkSummary()
    stop = stop or threading.Event()
    declined: set[str] = set()  # released by this loop: the coordinator hands them out again, skip them
    while not stop.is_set() and (not max_tasks or summary.submitted + summary.released < max_tasks):
        leases = session.lease(min(len(declined) + 1, MAX_LEASE_BATCH))
        fresh = [lease for lease in leases if lease.task_id not in declined]
        for extra in fresh[1:] + [lease for lease in leases if lease.task_id in declined]:
            extra.release(quiet=True)
        if not fresh:
            if not follow:
                break
            stop.wait(idle_s)
            continue
        with fresh[0] as lease:
            why = CoordinatorClient.pick_reasons(lease.task)
            log.info("task %s leased (frame %s)%s", lease.task_id, lease.task.frame_id, f": {why}" if why else "")
            try:
                outcome = annotate(lease)
            except SegxalError as e:
                outcome = Decline(f"{type(e).__name__}: {e}")
            if isinstance(outcome, Answer):
                try:
                    reply = lease.submit(outcome.labels, region_ids=outcome.region_ids)
                except (InvalidInput, FailedPrecondition) as e:  # refused: this task, not the loop
                    outcome = Decline(f"submit refused: {e}")
            if isinstance(outcome, Decline):
                lease.release(quiet=True)
                declined.add(lease.task_id)
                summary.released += 1
                summary.errors.append(f"{lease.task_id}: {outcome.reason}")
                log.info("task %s released: %s", lease.task_id, outcome.reason)
                continue
            summary.submitted += 1
            summary.cost += outcome.cost
            log.info("task %s submitted: annotation %s (dice %s)", lease.task_id, reply.annotation.annotation_id,
                     f"{reply.annotation.dice:.3f}" if reply.annotation.has_dice else "n/a")
    return summary


# ---------------------------------------------------------------- command-line flags shared by the clients

def add_labeling_args(parser: argparse.ArgumentParser, env_prefix: str) -> None:
    """The coordinator / pool / lease flags every labeling client takes; each has an environment
    variable <env_prefix><FLAG> (flags win)."""
    d = LabelingConfig()
    env = lambda name, default: os.environ.get(env_prefix + name, default)  # noqa: E731
    parser.add_argument("--coordinator", default=env("COORDINATOR", d.coordinator), help="coordinator host:port")
    parser.add_argument("--pool", default=env("POOL", ""), help="pool id or name")
    parser.add_argument("--cycle", default=env("CYCLE", ""), help="lease from this cycle only")
    parser.add_argument("--client-id", default=env("CLIENT_ID", ""), help="lease holder's name")
    parser.add_argument("--lease-s", type=float, default=float(env("LEASE_S", d.lease_s)),
                        help="how long a leased task stays this client's without a heartbeat")
    parser.add_argument("--heartbeat-s", type=float, default=float(env("HEARTBEAT_S", 0.0)),
                        help="0: a third of --lease-s")
    parser.add_argument("--tls-ca", default=env("TLS_CA", None), help="PEM of the coordinator's CA: use TLS")
    parser.add_argument("--token", default=env("TOKEN", None), help="bearer token sent to the coordinator")


def labeling_config_from_args(args: argparse.Namespace) -> LabelingConfig:
    return LabelingConfig(coordinator=args.coordinator, pool=args.pool, cycle_id=args.cycle,
                          client_id=args.client_id, lease_s=args.lease_s, heartbeat_s=args.heartbeat_s,
                          channel=ChannelConfig(tls_ca=args.tls_ca, bearer_token=args.token))


def add_work_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tasks", type=int, default=0, help="stop after this many tasks (0: until none waits)")
    parser.add_argument("--follow", action="store_true", help="keep waiting for new tasks instead of exiting")
    parser.add_argument("--idle-s", type=float, default=5.0, help="with --follow: wait between empty leases")
