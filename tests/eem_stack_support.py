"""A real inference server and EEM service over one model repository and one frames folder, for
tests that score frames end to end (started on ephemeral ports, stopped on exit)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from services.common.server import ServerConfig
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer


@contextlib.contextmanager
def eem_stack(repository: Path, frames_root: Path) -> Iterator[EemClient]:
    """Yields an EEM client, serving once both servers are up; segmentation and depth come from
    the one inference server over `repository`."""
    inference = InferenceServer(InferenceServerConfig(
        repository=str(repository), server=ServerConfig(address="127.0.0.1:0", max_workers=8, grace_s=2.0),
        runtime=RuntimeConfig(intra_op_threads=1), poll_interval_s=0.0))
    inference.start()
    eem = None
    try:
        eem = EemServer(EemServiceConfig(seg_target=inference.target, depth_target=inference.target,
                                         storage_roots=[str(frames_root)],
                                         server=ServerConfig(address="127.0.0.1:0", grace_s=2.0),
                                         health_poll_s=0.1, pipeline=PipelineConfig(max_concurrency=1)))
        eem.start()
        with EemClient(eem.target, timeout_s=60) as client:
            client.wait_until_serving(30)
            yield client
    finally:
        if eem is not None:
            eem.stop(2.0)
        inference.stop(2.0)
