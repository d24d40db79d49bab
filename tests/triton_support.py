"""Shared helpers of the tests/test_triton_*.py files: the real Triton Inference Server (the
tritonserver of nvidia-pytriton, set up by scripts/setup_triton.sh) on ephemeral ports, and the
EEM service + coordinator in front of any inference target."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.model_repository import ModelRepository
from services.common.server import ServerConfig
from services.coordinator.config import CoordinatorConfig
from services.coordinator.ranking import RankingConfig
from services.coordinator.server import CoordinatorServer
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.triton.server import TritonConfig, TritonServer, TritonUnavailable, find_triton


@pytest.fixture(scope="session")
def triton_install():
    """tritonserver in its own venv; skips only when the wheel cannot be installed here."""
    try:
        return find_triton()
    except TritonUnavailable as e:
        pytest.skip(f"nvidia-pytriton (tritonserver) cannot be installed here: {e}")


def python_flavour(repo: ModelRepository) -> ModelRepository:
    """Switch every model of `repo` to the Python-backend flavour (what Triton here can serve)."""
    for model in repo.list_models():
        repo.set_flavour(model, "python")
    return repo


@contextlib.contextmanager
def running_triton(install, repo: ModelRepository, workdir: Path, **cfg):
    """Triton on 127.0.0.1:<ephemeral> over `repo`, one ONNX Runtime thread per instance (2 shared
    cores), its log kept under `workdir`; stopped on exit."""
    cfg.setdefault("intra_op_threads", 1)
    server = TritonServer(TritonConfig(repository=str(repo.root), workdir=str(workdir), **cfg), install)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Ranking:
    eem: str  # host:port
    coordinator: str


@contextlib.contextmanager
def eem_and_coordinator(inference_target: str, dataset: Path, root: Path):
    """The real EEM service (segmentation and depth from `inference_target`) and coordinator
    (SQLite) on ephemeral ports."""
    eem = EemServer(EemServiceConfig(seg_target=inference_target, depth_target=inference_target,
                                     storage_roots=[str(dataset)], health_poll_s=0.1,
                                     server=ServerConfig(address="127.0.0.1:0", grace_s=1.0),
                                     pipeline=PipelineConfig(max_concurrency=2)))
    eem.start()
    coordinator = CoordinatorServer(CoordinatorConfig(
        db=f"sqlite://{root / 'coordinator.db'}", storage=str(root / "coordinator-storage"),
        server=ServerConfig(address="127.0.0.1:0", grace_s=1.0), db_pool_size=4, eem_target=eem.target, default_lease_s=60,
        ranking=RankingConfig(backoff_initial_s=0.05, backoff_max_s=0.2, deadline_s=60)))
    coordinator.start()
    try:
        yield Ranking(eem.target, coordinator.target)
    finally:
        coordinator.stop(1.0)
        eem.stop(1.0)
