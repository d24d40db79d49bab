"""The trainer server: frame storage, model repository, job runner and (optionally) a coordinator
client behind services.common's one gRPC server set-up. Health is SERVING once saved jobs are
loaded and the worker runs."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from segxal.storage import FrameStorage, StorageConfig
from segxalpb.trainer.v1 import trainer_pb2_grpc
from services.common.model_repository import ModelRepository
from services.common.server import ServiceServer
from services.coordinator.client import CoordinatorClient
from services.trainer import wire
from services.trainer.api import AnnotationRef
from services.trainer.config import TrainerConfig
from services.trainer.jobs import JobRunner
from services.trainer.servicer import TrainerServicer
from services.trainer.versions import VersionStore
from services.trainer.wire import SERVICE_NAME

log = logging.getLogger(__name__)


class TrainerServer(ServiceServer):
    """Owns everything the service runs on; `start` returns the bound port, `stop` drains.

    Raises:
        InvalidInput / NotFound / PermissionDenied: a bad configuration (storage roots, held-out
            split, seed set), from the constructor.
    """

    service_name = SERVICE_NAME

    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg.validate()
        self.storage = FrameStorage(StorageConfig(roots=list(cfg.storage_roots)))
        self.versions = VersionStore(ModelRepository(cfg.repository), cfg.state_dir,
                                     before_rename=self._pause_before_rename if cfg.publish_pause_s > 0 else None)
        self.coordinator = CoordinatorClient(cfg.coordinator, cfg.coordinator_channel, client_id="trainer") if cfg.coordinator else None
        self.runner = JobRunner(cfg, self.storage, self.versions,
                                self._pool_annotations if self.coordinator else None)
        super().__init__(cfg.server)
        self.grpc.add(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(self.runner))

    def _pool_annotations(self, pool_id: str) -> list[AnnotationRef]:
        return wire.annotations_from_coordinator(list(self.coordinator.annotations(pool_id)))

    def _pause_before_rename(self, tmp: Path) -> None:
        # debugging crash safety: the version is complete in `tmp`, not yet renamed into place
        log.warning("publish paused %.1f s before renaming %s", self.cfg.publish_pause_s, tmp)
        time.sleep(self.cfg.publish_pause_s)

    def _starting(self) -> None:
        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        self.runner.start()  # saved jobs loaded and the worker running: then SERVING

    def _stopping(self, grace: float | None) -> None:
        """The running job stops after its current epoch and resumes at the next start."""
        self.runner.stop(timeout=grace if grace is not None else self.cfg.server.grace_s)

    def _stopped(self) -> None:
        if self.coordinator is not None:
            self.coordinator.close()
