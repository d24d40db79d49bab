"""Configuration of the inference server: one dataclass, built once in main() from flags and env."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.common.server import ServerConfig


@dataclass
class RuntimeConfig:
    """How ONNX Runtime runs every model."""
    device: str = "cpu"  # "cuda": CUDAExecutionProvider when it loads, else CPU (logged)
    # threads inside one model execution; 0 = ONNX Runtime's default (one per physical core).
    # Instances (config.pbtxt instance_group count) run in parallel, each with this many threads.
    intra_op_threads: int = 0
    # ONNX Runtime's worker threads spin a little after each run waiting for more work: good for
    # back-to-back runs, but on few cores the spinning takes CPU from gRPC and (de)serialisation
    spinning: bool = True


@dataclass
class InferenceServerConfig:
    repository: str = "model_repository"  # Triton layout: <repository>/<model>/<version>/model.onnx
    server: ServerConfig = field(default_factory=lambda: ServerConfig(
        address="0.0.0.0:8001",  # Triton's gRPC port, so clients configured for Triton work unchanged
        max_workers=64))  # each in-flight ModelInfer holds a thread while queued for its batch
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    poll_interval_s: float = 2.0  # look for new versions / models this often; 0 = never (explicit loads only)
    # largest single input tensor accepted, by its declared shape x dtype size; checked before any
    # decoding (a 1024x2048 uint8 RGB batch of 8 is 48 MiB)
    max_tensor_bytes: int = 64 * 1024 * 1024
    server_name: str = "segxal-inference"
    server_version: str = "0.1.0"
