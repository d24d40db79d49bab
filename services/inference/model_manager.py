"""The inference core: which model versions are loaded, how requests reach them, and hot reload.

Each model has an immutable mapping version -> loaded version (ONNX Runtime session + batcher).
Loading never touches that mapping until the new version is fully loaded; then the mapping is
replaced in one assignment (atomic under the GIL), and the versions that left it are drained
(their batchers finish every queued request) in the background. A request that picked a version
just before the swap and finds its batcher closed resolves the version again, so a swap fails no
request. Versions follow config.pbtxt's version_policy (latest N by default); a request may pin
a version by number.

Polling (every `poll_interval_s`) picks up new versions, new models, changed configs and removed
models; a version that fails to load is skipped (the previous versions keep serving) and is not
retried until its files or the config change. An explicit load (RepositoryModelLoad) retries and
reports the failure to the caller.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from tritonclient.grpc import model_config_pb2 as mc

from segxal.errors import FailedPrecondition, NotFound, NotReady, SegxalError
from segxal.modelspec import TensorSpec
from services.common.model_repository import (
    ModelRepository, candidate_versions, format_config)
from services.inference.admission import PixelAdmission, request_pixels
from services.inference.batcher import Batcher, BatcherClosed, BatcherStats, BatchPolicy
from services.inference.config import InferenceServerConfig
from services.inference.api import InferRequest, InferResult, ModelStatus
from services.inference.runtime import OnnxModel

log = logging.getLogger(__name__)

_DEFAULT_MAX_QUEUE_SIZE = 1024  # Triton's max_queue_size 0 means unbounded; we still keep a cap
_SWAP_RETRIES = 5  # a request can meet this many swaps in a row before giving up (UNAVAILABLE)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return None


_LIBC = _load_libc()


# glibc gives each thread that contends for malloc its own arena (up to 8 per core); with 64
# gRPC workers and ONNX Runtime's threads, a retired session's memory lies spread over many
# arenas, where it fragments. Measured (bench/inference_memory.py, 2 request threads, both models
# republished): RSS after 10 / 20 / 30 reloads 267 / 324 / 334 MB with trims alone, 241 / 240 / 243
# with MALLOC_ARENA_MAX=2 as well, 232 / 308 / 243 with the cap set at import (one sample caught
# mid-swap); set later, in start(), 276 / 295 / 328. Requests spend their time in ONNX Runtime,
# not in malloc: 2 is enough.
_MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = _MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas for the process (threads made afterwards share them); a no-op
    where libc is not glibc or the environment already set MALLOC_ARENA_MAX."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt") and "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(_M_ARENA_MAX, arenas)


limit_malloc_arenas()  # at import, before the server's and ONNX Runtime's threads first allocate


def release_freed_memory() -> None:
    """Give the heap that retired versions freed back to the OS (glibc malloc_trim).

    A retired version's ONNX Runtime session frees its arena (tens to hundreds of MB) into
    whichever glibc malloc arenas the request threads used; glibc keeps that memory mapped, so
    without a trim the server's RSS ratchets up across hot reloads under load.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@dataclass
class _Version:
    number: int
    signature: tuple  # config text + file stats: a change means "load again"
    model: OnnxModel
    batcher: Batcher


@dataclass
class _ModelState:
    name: str
    versions: dict[int, _Version] = field(default_factory=dict)  # replaced wholesale, never mutated
    failed: dict[int, tuple] = field(default_factory=dict)  # version -> signature that failed to load
    failed_reason: dict[int, str] = field(default_factory=dict)  # version -> why (RepositoryIndex)
    reason: str = ""  # why the last load failed (RepositoryIndex shows it)
    unloaded: bool = False  # explicitly unloaded: polling leaves it alone until loaded again


@dataclass(frozen=True)
class ModelDescription:
    """What ModelMetadata / ModelConfig report about a loaded model version."""
    name: str
    versions: list[int]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batched: bool
    config: mc.ModelConfig


def batch_policy(config: mc.ModelConfig, instances: int | None = None) -> BatchPolicy:
    """Batching limits from a config (Triton's fields and meaning).

    Without `dynamic_batching` each request runs alone (with its own batch dimension).
    `instances` (batches executing at once) defaults to the config's instance_group count; the
    server passes the loaded model's `parallel_runs`.
    """
    instances = instances or sum(g.count for g in config.instance_group) or 1
    if not config.HasField("dynamic_batching") or config.max_batch_size <= 0:
        return BatchPolicy(max_batch_size=0, max_queue_delay_s=0.0,
                           max_queue_size=_DEFAULT_MAX_QUEUE_SIZE, instances=instances)
    db = config.dynamic_batching
    return BatchPolicy(max_batch_size=config.max_batch_size,
                       max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
                       max_queue_size=db.default_queue_policy.max_queue_size or _DEFAULT_MAX_QUEUE_SIZE,
                       instances=instances)


class ModelManager:
    """Loads, serves, swaps and unloads the repository's models.

    Args:
        repository: the model repository.
        cfg: server configuration (runtime, polling, limits).
        on_readiness: called with (model name, ready) whenever a model's readiness may have changed.
    """

    def __init__(self, repository: ModelRepository, cfg: InferenceServerConfig,
                 on_readiness: Callable[[str, bool], None] | None = None):
        self.repository = repository
        self.cfg = cfg
        self._on_readiness = on_readiness or (lambda name, ready: None)
        self._models: dict[str, _ModelState] = {}
        self._lock = threading.Lock()  # serialises loads/unloads/polls; inference never takes it
        self._retiring: list[threading.Thread] = []
        self._retired_since_trim = threading.Event()  # a retired version was freed: trim at the next poll
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.admission = PixelAdmission.from_budget(cfg.memory_budget_bytes, cfg.bytes_per_pixel)

    # ---- life cycle ----

    def start(self) -> None:
        """Load every model in the repository (failures are logged), then start polling."""
        self.poll()
        if self.cfg.poll_interval_s > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._poller.start()

    def begin_shutdown(self) -> None:
        """Stop polling and stop holding requests back for batching, so that in-flight requests
        finish within the server's grace period; still serving."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._lock:
            for state in self._models.values():
                for lv in state.versions.values():
                    lv.batcher.flush()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling and drain every loaded version (queued requests finish)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
        with self._lock:
            for state in self._models.values():
                self._retire(state, list(state.versions.values()))
                state.versions = {}
        for t in self._retiring:
            t.join(timeout)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything on disk
                log.exception("model repository poll failed")

    def poll(self) -> None:
        """One pass over the repository: load new/changed versions, drop removed models."""
        if self._retired_since_trim.is_set():  # a retired session was freed since the last poll
            self._retired_since_trim.clear()
            release_freed_memory()
        try:
            names = self.repository.list_models()
        except NotFound as e:
            log.error("%s", e)
            names = []
        with self._lock:
            for name in names:
                state = self._models.get(name)
                if state is not None and state.unloaded:
                    continue
                self._sync(name, explicit=False)
            for name in [n for n in self._models if n not in names]:
                state = self._models.pop(name)
                self._retire(state, list(state.versions.values()))
                log.info("model %s: removed from the repository, unloaded", name)
                self._on_readiness(name, False)

    # ---- loading ----

    def _signature(self, model: str, version: int, config: mc.ModelConfig) -> tuple:
        d = self.repository.version_dir(model, version)
        files = []
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            st = entry.stat()
            files.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return format_config(config), tuple(files)

    def _load_version(self, model: str, version: int, config: mc.ModelConfig, signature: tuple) -> _Version:
        own_config = mc.ModelConfig()
        own_config.CopyFrom(config)  # completed from the graph per version; never shared
        path = self.repository.model_file(model, version, own_config)
        onnx_model = OnnxModel(path, own_config, self.cfg.runtime)
        batcher = Batcher(onnx_model.run, onnx_model.output_names, batch_policy(own_config, onnx_model.parallel_runs),
                          name=f"{model}/{version}")
        log.info("model %s: version %d loaded (%s)", model, version, ", ".join(onnx_model.providers))
        return _Version(version, signature, onnx_model, batcher)

    def _sync(self, name: str, explicit: bool) -> list[str]:
        """Bring one model in line with the repository; returns the load errors (caller holds _lock)."""
        state = self._models.setdefault(name, _ModelState(name))
        errors: list[str] = []
        try:
            config = self.repository.read_config(name)
            candidates, wanted = candidate_versions(config, self.repository.list_versions(name))
        except SegxalError as e:
            errors.append(str(e))
            candidates, wanted, config = [], 0, None
            if state.reason != str(e):  # once per new problem, not every poll
                log.error("model %s: %s", name, e)
        for gone in set(state.failed) - set(candidates) if config is not None else ():
            state.failed.pop(gone, None)  # its folder was removed: forget the failure
            state.failed_reason.pop(gone, None)
        current = state.versions
        chosen: dict[int, _Version] = {}
        for v in candidates:
            if len(chosen) >= wanted:
                break
            try:
                signature = self._signature(name, v, config)
            except OSError:  # the version folder vanished while we looked
                continue
            loaded = current.get(v)
            if loaded is not None and loaded.signature == signature:
                chosen[v] = loaded
                continue
            if not explicit and state.failed.get(v) == signature:
                continue  # failed before, unchanged since: don't retry (or log) every poll
            try:
                chosen[v] = self._load_version(name, v, config, signature)
                state.failed.pop(v, None)
                state.failed_reason.pop(v, None)
            except SegxalError as e:
                state.failed[v] = signature
                state.failed_reason[v] = str(e)
                errors.append(f"version {v}: {e}")
                log.error("model %s: version %d failed to load: %s", name, v, e)
        if errors and not chosen:
            chosen = current  # nothing new works: whatever served before keeps serving
        if errors or chosen:
            state.reason = "; ".join(errors)  # else: only known failures were skipped, keep their reason
        if chosen is not current:
            state.versions = chosen  # the swap: one assignment
            retired = [lv for v, lv in current.items() if chosen.get(v) is not lv]
            self._retire(state, retired)
            if chosen.keys() != current.keys() or retired:
                log.info("model %s: serving versions %s", name, sorted(chosen))
        self._on_readiness(name, bool(state.versions))
        return errors

    def _retire(self, state: _ModelState, versions: list[_Version]) -> None:
        """Drain swapped-out versions in the background (their queued requests still complete)."""
        def drain(box: list[Batcher]) -> None:
            batcher = box.pop()  # the thread keeps no reference: the session is freed below
            batcher.close()
            del batcher
            self._retired_since_trim.set()

        for lv in versions:
            t = threading.Thread(target=drain, args=([lv.batcher],), name=f"retire-{state.name}/{lv.number}",
                                 daemon=True)
            t.start()
            self._retiring.append(t)
        self._retiring = [t for t in self._retiring if t.is_alive()]

    def load(self, name: str) -> None:
        """(Re)load a model now, as RepositoryModelLoad asks.

        Raises:
            NotFound: the model is not in the repository.
            FailedPrecondition: a version or the config failed to load; the versions served before
                keep serving (the message lists both).
        """
        if name not in self.repository.list_models():
            raise NotFound(f"model {name!r} is not in the repository {self.repository.root}")
        with self._lock:
            state = self._models.setdefault(name, _ModelState(name))
            state.unloaded = False
            errors = self._sync(name, explicit=True)
            serving = sorted(state.versions)
        if errors:
            raise FailedPrecondition(f"model {name!r}: {'; '.join(errors)} (serving versions {serving})")

    def unload(self, name: str) -> None:
        """Stop serving a model; queued requests finish. Polling leaves it unloaded until `load`.

        Raises:
            NotFound: the model is neither loaded nor in the repository.
        """
        with self._lock:
            state = self._models.get(name)
            if state is None:
                if name not in self.repository.list_models():
                    raise NotFound(f"model {name!r} is not in the repository {self.repository.root}")
                state = self._models[name] = _ModelState(name)
            state.unloaded = True
            old = list(state.versions.values())
            state.versions = {}
            state.reason = "unloaded"
            self._retire(state, old)
        self._on_readiness(name, False)

    # ---- serving ----

    def _resolve(self, name: str, version: int | None) -> _Version:
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"model {name!r} is not served; models: {sorted(self._models)}")
        versions = state.versions
        if not versions:
            raise NotReady(f"model {name!r} has no version loaded ({state.reason or 'loading'})")
        number = max(versions) if version is None else version
        loaded = versions.get(number)
        if loaded is None:
            raise NotFound(f"model {name!r} version {number} is not served; serving versions {sorted(versions)}")
        return loaded

    def infer(self, request: InferRequest) -> InferResult:
        """Run one request on the requested (or latest) version, batched with concurrent ones.

        Raises:
            NotFound: unknown model or version. NotReady: no version loaded, or the deadline passed.
            InvalidInput: tensors do not fit the model. ResourceExhausted: queue full, or more
            pixels than the admission limit allows (services.inference.admission).
        """
        for _ in range(_SWAP_RETRIES):
            loaded = self._resolve(request.model, request.version)
            rows = loaded.model.check_request(request.inputs, request.outputs)
            pixels = request_pixels(request.inputs, loaded.model.layout)
            try:
                with self.admission.admit(request.model, pixels, request.deadline, loaded.model.bytes_per_pixel):
                    outputs = loaded.batcher.submit(request.inputs, request.outputs, rows, request.deadline)
            except BatcherClosed:
                continue  # swapped out between resolve and submit: the new mapping is in place
            return InferResult(model=request.model, version=loaded.number, outputs=outputs,
                               request_id=request.request_id)
        raise NotReady(f"model {request.model!r} is being reloaded; retry")

    def model_ready(self, name: str, version: int | None = None) -> bool:
        state = self._models.get(name)
        if state is None or not state.versions:
            return False
        return version is None or version in state.versions

    def statistics(self, name: str = "", version: int | None = None) -> list[tuple[str, int, BatcherStats]]:
        """(model, version, counters) of the loaded versions: all models when `name` is empty.

        Raises:
            NotFound: a named model or version is not loaded.
        """
        if not name:
            return [(n, v, lv.batcher.stats()) for n, st in sorted(self._models.items())
                    for v, lv in sorted(st.versions.items())]
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"model {name!r} is not served; models: {sorted(self._models)}")
        versions = state.versions
        if version is not None and version not in versions:
            raise NotFound(f"model {name!r} version {version} is not served; serving versions {sorted(versions)}")
        return [(name, v, lv.batcher.stats()) for v, lv in sorted(versions.items()) if version in (None, v)]

    def pending_requests(self, name: str) -> int:
        """Requests queued (not yet executing) for a model, all versions together."""
        state = self._models.get(name)
        return sum(v.batcher.queue_length() for v in state.versions.values()) if state else 0

    def server_ready(self) -> bool:
        """Ready when every model meant to serve (not explicitly unloaded) has a version loaded."""
        return all(s.versions for s in list(self._models.values()) if not s.unloaded)

    def describe(self, name: str, version: int | None = None) -> ModelDescription:
        """Metadata and config of a served model version (latest if None).

        Raises:
            NotFound / NotReady: as infer.
        """
        loaded = self._resolve(name, version)
        m = loaded.model
        return ModelDescription(
            name=name, versions=sorted(self._models[name].versions), platform=m.config.platform or m.config.backend,  # as Triton reports it
            inputs=[io.spec for io in m.inputs], outputs=[io.spec for io in m.outputs],
            batched=m.batched, config=m.config)

    def repository_index(self, ready_only: bool = False) -> list[ModelStatus]:
        """Every model in the repository (and any still loaded), with its versions' state."""
        try:
            names = set(self.repository.list_models())
        except NotFound:
            names = set()
        names |= set(self._models)
        rows = []
        for name in sorted(names):
            state = self._models.get(name)
            versions = state.versions if state else {}
            for v in sorted(versions):
                rows.append(ModelStatus(name, str(v), "READY"))
            if ready_only:
                continue
            # a version that failed to load while older ones serve: its own row, with its reason
            # (a model READY with an empty reason would hide that the newest version is broken)
            newest = max(versions, default=0)
            failed = {v: r for v, r in (state.failed_reason.items() if state else ()) if v > newest}
            for v, reason in sorted(failed.items()):
                rows.append(ModelStatus(name, str(v), "UNAVAILABLE", f"failed to load: {reason}"))
            if not versions and not failed:
                rows.append(ModelStatus(name, "", "UNAVAILABLE", (state.reason if state else "") or "not loaded"))
        return rows
