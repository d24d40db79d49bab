"""Model versions as the trainer sees them: the model repository (services.common.model_repository,
the one reader/writer; what the inference servers serve) plus the training state the trainer keeps
per version, so the next job fine-tunes from it:

    <repo>/<model>/<version>/model.onnx        the served graph
    <repo>/<model>/<version>/training.json     what made it: job, cycle, base version or rollback
                                               source, held-out metrics, parity (travels with the
                                               version, so listing never needs the trainer's state)
    <state>/models/<model>/<version>/checkpoint.pt   weights + optimiser (segxal.train checkpoint)

Publishing goes through ModelRepository.publish (files into a hidden temp folder, fsync, rename to
the next number): a reader sees the old set of versions or the new one, never a half-written
version. The checkpoint is copied after the rename; a trainer killed in between finds its version
again by the job id in training.json (`find_published`) and finishes the copy.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from tritonclient.grpc import model_config_pb2 as mc

from segxal import imageio
from segxal.errors import FailedPrecondition, NotFound
from segxal.models.external import ExternalModel
from segxal.models.unet import UNet
from segxal.train import model_from_checkpoint, read_checkpoint
from services.common.model_repository import ModelRepository
from services.trainer.api import Metrics, VersionInfo

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
CHECKPOINT_FILE = "checkpoint.pt"


def _provenance_json(info: VersionInfo) -> bytes:
    d = asdict(info)
    for key in ("model_name", "version", "uri", "current", "has_training_state"):
        del d[key]  # facts of the repository and the state folder, not of the version's making
    return json.dumps(d, indent=2).encode()


class VersionStore:
    """Publishes, rolls back and lists versions; one publisher at a time within this process.

    Args:
        repository: the model repository the inference servers poll.
        state_dir: the trainer's state folder.
        before_rename: passed to ModelRepository.publish (a test hook that pauses a publish).
    """

    def __init__(self, repository: ModelRepository, state_dir: str | Path,
                 before_rename: Callable[[Path], None] | None = None):
        self.repository = repository
        self.state_dir = Path(state_dir)
        self._before_rename = before_rename
        self._lock = threading.Lock()  # a rollback and a job's publish never interleave

    # ---- reading ----

    def versions(self, model: str) -> list[int]:
        """Versions in the repository, ascending; [] when the model has none (or no folder yet)."""
        try:
            return self.repository.list_versions(model)
        except NotFound:
            return []

    def current(self, model: str) -> int:
        """The newest version (the one served under the default policy); 0 when there is none."""
        return max(self.versions(model), default=0)

    def checkpoint_path(self, model: str, version: int) -> Path:
        return self.state_dir / "models" / model / str(version) / CHECKPOINT_FILE

    def require_state(self, model: str, version: int) -> Path:
        """The checkpoint of a version.

        Raises:
            FailedPrecondition: the trainer keeps no state for this version (it was not published
                by this trainer).
        """
        path = self.checkpoint_path(model, version)
        if not path.is_file():
            raise FailedPrecondition(
                f"model {model!r} version {version} has no training state ({path} is missing; it was "
                f"not published by this trainer): roll back to a version that has one")
        return path

    def load_model(self, model: str, version: int) -> UNet:
        """The weights of a version, to fine-tune from.

        Raises:
            FailedPrecondition: no training state for this version (require_state), or the
                checkpoint is not a segmentation model's.
        """
        path = self.require_state(model, version)
        net = model_from_checkpoint(read_checkpoint(path))
        if not isinstance(net, (UNet, ExternalModel)):
            raise FailedPrecondition(f"{path}: not a segmentation checkpoint")
        return net

    def _provenance(self, model: str, version: int) -> dict:
        """A version's training.json; {} when it has none (published by someone else) or it is unreadable."""
        path = self.repository.version_dir(model, version) / TRAINING_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); the version is listed without its history", path, e)
            return {}

    def info(self, model: str, version: int, current: int | None = None) -> VersionInfo:
        """What is known about one version (training.json when present)."""
        info = VersionInfo(model_name=model, version=version, uri=str(self.repository.version_dir(model, version)),
                           current=version == (self.current(model) if current is None else current),
                           has_training_state=self.checkpoint_path(model, version).is_file())
        d = self._provenance(model, version)
        metrics = d.pop("metrics", None)
        info.metrics = Metrics(**metrics) if metrics else None
        for key in ("job_id", "cycle_id", "base_version", "rolled_back_from", "published_unix_s"):
            if key in d:
                setattr(info, key, d[key])
        return info

    def list(self, model: str) -> list[VersionInfo]:
        """Every version of a model, oldest first."""
        versions = self.versions(model)
        current = max(versions, default=0)
        return [self.info(model, v, current) for v in versions]

    def find_published(self, model: str, job_id: str) -> int | None:
        """The version a job published, if any (newest first: a job publishes at most once)."""
        for v in reversed(self.versions(model)):
            if self._provenance(model, v).get("job_id") == job_id:
                return v
        return None

    # ---- writing ----

    def check_writable(self, model: str) -> None:
        """Prove that a version could be published now, by making and removing a temp folder where
        the publish would make its own (root may write anywhere permissions say it may not, so
        access bits alone prove nothing).

        Raises:
            FailedPrecondition: the repository is missing or cannot be written (names the cause).
        """
        root = self.repository.root
        if not root.is_dir():
            raise FailedPrecondition(f"model repository {root} does not exist or is not a folder")
        target = root / model if (root / model).exists() else root
        try:
            Path(tempfile.mkdtemp(prefix=".writable-", dir=target)).rmdir()
        except OSError as e:
            raise FailedPrecondition(f"model repository folder {target} is not writable "
                                     f"({e.strerror or e})") from None

    def discard_unfinished_publishes(self, model: str) -> None:
        for path in self.repository.discard_unfinished_publishes(model):
            log.warning("removed %s, left by a publish that did not finish", path)

    def publish(self, model: str, candidate: Path, config: mc.ModelConfig, checkpoint: Path,
                info: VersionInfo, gate: Callable[[int], None]) -> int:
        """Publish a candidate as the next version, then keep its training state.

        Args:
            model: model name.
            candidate: folder with model.onnx (all its files become the version's).
            config: the model's config.pbtxt (rewritten only when it changed).
            checkpoint: the candidate's segxal.train checkpoint.
            info: provenance written as training.json (version fields are filled in here).
            gate: called with the current version under the publish lock; raises to refuse.

        Returns:
            The new version number.

        Raises:
            FailedPrecondition: the gate refused, or the repository cannot be written; the current
                version is untouched either way.
        """
        with self._lock:
            gate(self.current(model))
            self.check_writable(model)
            info.published_unix_s = time.time()
            return self._publish_locked(model, candidate, config, checkpoint, info)

    def _publish_locked(self, model: str, files: Path, config: mc.ModelConfig | None,
                        checkpoint: Path | None, info: VersionInfo) -> int:
        staging = Path(tempfile.mkdtemp(prefix="publish-", dir=self._tmp_dir()))
        try:
            for f in files.iterdir():
                if f.is_file() and f.name != TRAINING_FILE:
                    shutil.copyfile(f, staging / f.name)
            (staging / TRAINING_FILE).write_bytes(_provenance_json(info))
            try:
                version = self.repository.publish(model, staging, config, before_rename=self._before_rename)
            except OSError as e:
                raise FailedPrecondition(f"model repository {self.repository.root}: publish failed "
                                         f"({e.strerror or e}); the current version is unchanged") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if checkpoint is not None:
            self.keep_state(model, version, checkpoint)
        log.info("model %s: published version %d (%s)", model, version,
                 f"rollback of {info.rolled_back_from}" if info.rolled_back_from else f"job {info.job_id}")
        return version

    def keep_state(self, model: str, version: int, checkpoint: Path) -> None:
        """Copy a checkpoint in as a version's training state (atomically)."""
        imageio.atomic_write_bytes(self.checkpoint_path(model, version), checkpoint.read_bytes())

    def _tmp_dir(self) -> Path:
        d = self.state_dir / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rollback(self, model: str, version: int) -> VersionInfo:
        """Publish an older version's files again as the newest version.

        Raises:
            NotFound: no such version.
            FailedPrecondition: it is already the current version, or the repository cannot be written.
        """
        with self._lock:
            versions = self.versions(model)
            if version not in versions:
                raise NotFound(f"model {model!r} has no version {version}; versions: {versions}")
            if version == max(versions):
                raise FailedPrecondition(f"model {model!r} version {version} is already the current version")
            self.check_writable(model)
            old = self.info(model, version)
            info = VersionInfo(model_name=model, version=0, uri="", metrics=old.metrics,
                               base_version=old.base_version, rolled_back_from=version,
                               published_unix_s=time.time())
            state = self.checkpoint_path(model, version)
            new = self._publish_locked(model, self.repository.version_dir(model, version), None,
                                       state if state.is_file() else None, info)
        return self.info(model, new)
