"""Configuration of the inference server: one dataclass, built once in main() from flags and env."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.common.server import ServerConfig
from services.inference.admission import DEFAULT_BYTES_PER_PIXEL, DEFAULT_MEMORY_BUDGET_BYTES


@dataclass
class RuntimeConfig:
    """How ONNX Runtime runs every model."""
    device: str = "cpu"  # "cuda": CUDAExecutionProvider when it loads, else CPU (logged)
    # threads of a model execution that runs alone; 0 = the cores this process may use (affinity,
    # cgroup quota): services.inference.runtime.intra_op_threads.
    intra_op_threads: int = 0
    # on CPU, batches of one model that execute at once, each overlapping one on a one-thread
    # session (services.inference.runtime.OnnxModel); 0 = one per core; the config's
    # instance_group count is the floor
    cpu_parallel_runs: int = 0
    # The intra-op threads of a run that executes alone spin between its parallel sections instead of
    # sleeping (a sleeping worker must be woken for every operator; on a VM that is an IPI and a vCPU
    # wake-up), and stop spinning as soon as the run returns (session.force_spinning_stop), so no
    # core is burnt between requests. Overlapping runs take the one-thread session, which has no
    # workers to spin. Measured (bench/infer_overhead.py, 2 cores, 256x512 U-Net, 16 alternating
    # rounds at concurrency 1): 1.031 +- 0.027 x the frames/s without spinning, CPU per frame the
    # same (+0.6 %); at concurrency 4 and 8 within the rounds' spread (0.95-1.02 in four runs).
    # ORT's own default (spin after a run too) cost 112-146 CPU-ms a frame where 88 were needed, an
    # earlier measurement.
    spinning: bool = True
    # ONNX Runtime's CPU arena keeps what a run grew: about 2.4 kB per pixel of the largest shape
    # run (the first run's tensors plus the memory-pattern block of the second; measured with
    # bench/inference_memory.py), per session. A run of more pixels than this (batch x height x
    # width) ends with the arena shrunk (run option memory.enable_memory_arena_shrinkage), giving
    # back all it grew; smaller runs keep the arena warm, since shrinking after every run made a
    # 256 x 512 frame 1.3x and a batch of four 2x slower (ONNX Runtime without an arena: 1.45x;
    # alternating rounds on the loaded 2-core machine). So an idle server holds its weights plus
    # at most ~2.4 kB x this many pixels per session (~600 MB at the default, two frames at
    # 256 x 512 or one 512 x 512), and requests in flight add at most the memory budget.
    # 0 = shrink after every run.
    arena_keep_pixels: int = 2 * 256 * 512


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
    # admission by work (services/inference/admission.py): requests in flight may hold this much
    # memory together, at bytes_per_pixel (measured) per pixel; 0 = no pixel limit
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    bytes_per_pixel: int = DEFAULT_BYTES_PER_PIXEL
    server_name: str = "segxal-inference"
    server_version: str = "0.1.0"
