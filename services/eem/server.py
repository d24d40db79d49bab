"""The EEM scoring server: storage + inference clients + pipeline behind services.common's one
gRPC server set-up, and a health watcher that keeps grpc.health.v1 NOT_SERVING until both
inference backends (segmentation and depth) answer ready, and again whenever one stops."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from segxal.storage import FrameStorage, StorageConfig
from segxalpb.eem.v1 import eem_pb2_grpc
from services.common.channel import ChannelConfig
from services.common.server import ServerConfig, ServiceServer
from services.eem.pipeline import PipelineConfig, ScoringPipeline
from services.eem.servicer import EemScoringServicer
from services.eem.wire import SERVICE_NAME
from services.inference.client import DEFAULT_DEPTH_MODEL, DEFAULT_SEGMENTATION_MODEL, InferenceClient

log = logging.getLogger(__name__)


@dataclass
class EemServiceConfig:
    seg_target: str  # segmentation inference server, "host:port" (services.common.channel targets)
    depth_target: str  # depth inference server; may equal seg_target
    storage_roots: list[str]  # frames outside these are refused (PERMISSION_DENIED)
    seg_model: str = DEFAULT_SEGMENTATION_MODEL
    depth_model: str = DEFAULT_DEPTH_MODEL
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    max_frame_bytes: int = StorageConfig.max_frame_bytes
    health_poll_s: float = 1.0  # how often backend readiness is re-checked
    backend_channel: ChannelConfig = field(default_factory=ChannelConfig)  # TLS/token to inference
    # address, grace period (in-flight frames get this long on stop), TLS, auth; each open stream
    # holds one gRPC worker thread for its duration
    server: ServerConfig = field(default_factory=lambda: ServerConfig(address="0.0.0.0:50053", max_workers=32))


class EemServer(ServiceServer):
    """Owns everything the service runs on; `start` returns the bound port, `stop` drains."""

    service_name = SERVICE_NAME

    def __init__(self, cfg: EemServiceConfig):
        self.cfg = cfg
        self.storage = FrameStorage(StorageConfig(roots=list(cfg.storage_roots), max_frame_bytes=cfg.max_frame_bytes))
        timeout = cfg.pipeline.inference_timeout_s
        self.seg_client = InferenceClient(cfg.seg_target, cfg.backend_channel, segmentation_model=cfg.seg_model,
                                          depth_model=cfg.depth_model, timeout_s=timeout)
        self.depth_client = InferenceClient(cfg.depth_target, cfg.backend_channel, segmentation_model=cfg.seg_model,
                                            depth_model=cfg.depth_model, timeout_s=timeout)
        self.pipeline = ScoringPipeline(self.storage, self.seg_client, self.depth_client, cfg.pipeline)
        super().__init__(cfg.server)
        self.grpc.add(eem_pb2_grpc.add_EemScoringServicer_to_server, EemScoringServicer(self.pipeline))
        self._stopping_event = threading.Event()
        self._watcher = threading.Thread(target=self._watch_backends, name="eem-health", daemon=True)

    def _started(self) -> None:
        self._watcher.start()  # SERVING once both backends answer ready

    def _watch_backends(self) -> None:
        serving = None
        while not self._stopping_event.is_set():
            ready = self.pipeline.backends_ready()
            if ready != serving and not self._stopping_event.is_set():
                self.grpc.set_serving(SERVICE_NAME, ready)
                log.info("EEM scoring %s (segmentation %s, depth %s)", "SERVING" if ready else "NOT_SERVING",
                         self.cfg.seg_target, self.cfg.depth_target)
                serving = ready
            self._stopping_event.wait(self.cfg.health_poll_s)

    def _stopping(self, grace: float | None) -> None:
        self._stopping_event.set()
        if self._watcher.is_alive():  # it polls the backends: let it finish before their channels close
            self._watcher.join()

    def _stopped(self) -> None:
        self.pipeline.close(wait=True)
        self.seg_client.close()
        self.depth_client.close()
