"""The one reader/writer of the model repository, in Triton's layout so that the same folder
serves our ONNX Runtime server and Triton unchanged:

    <root>/<model>/config.pbtxt              Triton's ModelConfig in protobuf text format
    <root>/<model>/<version>/model.onnx      version = a positive integer; the graph is one file
                                             (or model.onnx + external data beside it)

Publishing is atomic: files go into a hidden temp folder beside the versions (`.publish-*`,
ignored by readers here and by Triton, whose loader skips non-numeric names), are fsynced, and
the folder is renamed to the next version number; a reader never sees a half-written version.
config.pbtxt is parsed and written with Triton's own `model_config_pb2.ModelConfig` (no copied proto).

Two flavours of config.pbtxt, the same model.onnx files:
- "onnxruntime" (default; what the GPU overlay's Triton and the project's server run):
  `platform: "onnxruntime_onnx"`, Triton's native ONNX Runtime backend;
- "python": `backend: "segxal_onnxruntime"`, a Triton Python-based backend
  (services/triton/segxal_onnxruntime/model.py) running the same file through ONNX Runtime, for a
  tritonserver that has the Python backend only (the PyPI wheel's). Same inputs, outputs, batching
  and version policy. The project's server serves both.
The flavour belongs to the repository: a config written over an existing one keeps the existing
one's flavour (a trainer publishing into a Triton-served repository does not switch it back), and
a model's first config takes the repository's default flavour when one is set
(`set_default_flavour`, a `.segxal-flavour` file at the root, which Triton ignores).
`set_flavour` changes an existing model's.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.imageio import atomic_write_bytes, fsync_dir
from segxal.modelspec import ModelSpec, TensorSpec

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
PYTHON_BACKEND = "segxal_onnxruntime"  # services/triton/<this>/model.py, installed as a Triton backend
FLAVOURS = ("onnxruntime", "python")
_TEMP_PREFIX = ".publish-"
_FLAVOUR_FILE = ".segxal-flavour"  # the repository's default flavour for new models


def config_datatype(datatype: str) -> int:
    """Protocol datatype ("FP16") -> config enum (TYPE_FP16)."""
    try:
        return mc.DataType.Value(f"TYPE_{datatype}")
    except ValueError:
        raise InvalidInput(f"datatype {datatype!r} has no config.pbtxt TYPE_ counterpart") from None


def protocol_datatype(config_type: int) -> str:
    """Config enum (TYPE_FP16) -> protocol datatype ("FP16"); TYPE_STRING is "BYTES" on the wire."""
    name = mc.DataType.Name(config_type)[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


@dataclass
class BatchingConfig:
    """Scheduling fields written into a new config.pbtxt (Triton's names, Triton's meaning)."""
    max_batch_size: int = 8  # 0 would mean "no batch dimension" to Triton; our models always have one
    max_queue_delay_us: int = 2_000  # wait this long for more requests to fill a batch
    max_queue_size: int = 64  # requests waiting beyond this are refused (RESOURCE_EXHAUSTED)
    instance_count: int = 1  # concurrent executions of the model (threads sharing one session)
    num_versions: int = 1  # version_policy latest { num_versions }: how many newest versions serve


def flavour_of(config: mc.ModelConfig) -> str:
    """"python" for the segxal_onnxruntime backend, else "onnxruntime"."""
    return "python" if config.backend == PYTHON_BACKEND else "onnxruntime"


def with_flavour(config: mc.ModelConfig, flavour: str) -> mc.ModelConfig:
    """A copy of `config` for the other backend (only platform/backend differ).

    Raises:
        InvalidInput: unknown flavour.
    """
    if flavour not in FLAVOURS:
        raise InvalidInput(f"config flavour must be one of {FLAVOURS}, got {flavour!r}")
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.ClearField("platform")
    out.ClearField("backend")
    if flavour == "python":
        out.backend = PYTHON_BACKEND
    else:
        out.platform = PLATFORM
    return out


def build_config(name: str, spec: ModelSpec, batching: BatchingConfig | None = None,
                 flavour: str = "onnxruntime") -> mc.ModelConfig:
    """A complete ModelConfig for an exported model.

    Args:
        name: the model's folder name (Triton requires config name == folder name).
        spec: tensors and parameters, e.g. from segxal.export.
        batching: scheduling; defaults as BatchingConfig.
        flavour: "onnxruntime" (Triton's native backend; default) or "python" (see the module doc).

    Returns:
        The config, ready for `ModelRepository.write_config` or `publish`.

    Raises:
        InvalidInput: unknown flavour.
    """
    b = batching or BatchingConfig()
    # a graph exported with a fixed batch (spec.fixed_batch): Triton's max_batch_size 0, the dims
    # carry the batch, no dynamic batching
    fixed = [spec.fixed_batch] if spec.fixed_batch is not None else []
    cfg = mc.ModelConfig(name=name, platform=PLATFORM, max_batch_size=0 if fixed else b.max_batch_size)
    cfg.version_policy.latest.num_versions = b.num_versions
    for t in spec.inputs:
        cfg.input.add(name=t.name, data_type=config_datatype(t.datatype), dims=fixed + list(t.dims))
    labels_output = spec.output_name("labels") if spec.class_names is not None else None
    for t in spec.outputs:
        out = cfg.output.add(name=t.name, data_type=config_datatype(t.datatype), dims=fixed + list(t.dims))
        if t.name == labels_output:
            out.label_filename = LABEL_FILE  # written beside config.pbtxt by write_config
    if not fixed:
        cfg.dynamic_batching.max_queue_delay_microseconds = b.max_queue_delay_us
        cfg.dynamic_batching.default_queue_policy.max_queue_size = b.max_queue_size
    # KIND_AUTO: Triton puts the instances on the GPU when there is one (the gpu overlay), else CPU;
    # our own server takes the device from its --device flag
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO, count=b.instance_count)
    for key, value in spec.to_parameters().items():
        cfg.parameters[key].string_value = value
    return cfg if flavour == "onnxruntime" else with_flavour(cfg, flavour)


def spec_from_config(config: mc.ModelConfig) -> ModelSpec:
    """The serving contract stored in a config (tensors + our parameters).

    Raises:
        InvalidInput: our parameters are missing or malformed, or the model has not one input.
    """
    params = {k: v.string_value for k, v in config.parameters.items()}
    # max_batch_size 0 (Triton): no batch dimension is implied, the dims start with the graph's own
    # (fixed) batch; our TensorSpec dims never include the batch
    skip = 1 if config.max_batch_size == 0 else 0
    tensors = lambda ts: tuple(  # noqa: E731 - two uses, one line each
        TensorSpec(t.name, protocol_datatype(t.data_type), tuple(t.dims)[skip:]) for t in ts)
    fixed_batch = None
    if skip:
        first = [t.dims[0] for t in config.input if len(t.dims)]
        fixed_batch = first[0] if first and first[0] > 0 else None
    return ModelSpec.from_parameters(params, tensors(config.input), tensors(config.output),
                                     where=f"model {config.name!r}", fixed_batch=fixed_batch)


LABEL_FILE = "labels.txt"


def label_names_from_config(config: mc.ModelConfig, model_dir: Path) -> tuple[str, ...] | None:
    """The class names of a Triton label file (`label_filename` on an output: one name per line,
    line i = label value i), or None when no output names one.

    Raises:
        NotFound: the named file is missing. InvalidInput: it is empty or has blank lines.
    """
    files = {t.label_filename for t in config.output if t.label_filename}
    if not files:
        return None
    if len(files) > 1:
        raise InvalidInput(f"model {config.name!r}: outputs name different label files {sorted(files)}")
    path = model_dir / files.pop()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise NotFound(f"{path}: label file named by label_filename in config.pbtxt is missing") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or any(not line.strip() for line in lines):
        raise InvalidInput(f"{path}: a label file needs one non-empty class name per line")
    return tuple(line.strip() for line in lines)


def parse_config(text: str, where: str = CONFIG_FILE) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's ModelConfig.

    Raises:
        InvalidInput: not valid ModelConfig text (the parser's message, naming `where`).
    """
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise InvalidInput(f"{where}: not a valid Triton ModelConfig: {e}") from None


def format_config(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def candidate_versions(config: mc.ModelConfig, available: list[int]) -> tuple[list[int], int]:
    """Which versions the config's version_policy allows, in order of preference, and how many to serve.

    Triton's policies: latest { num_versions: N } (the default, N = 1), all {}, specific { versions }.
    All allowed versions are returned (newest first for `latest`) so that a caller can fall back to
    an older one when the newest fails to load.

    Args:
        config: the model's config.
        available: versions present on disk.

    Returns:
        (allowed versions in preference order, number to serve).
    """
    newest_first = sorted(available, reverse=True)
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return newest_first, len(newest_first)
    if which == "specific":
        wanted = [v for v in newest_first if v in set(policy.specific.versions)]
        return wanted, len(set(policy.specific.versions))
    n = policy.latest.num_versions if which == "latest" else 1
    return newest_first, max(n, 1)


class ModelRepository:
    """Reads and publishes models under `root` (the Triton model repository layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _model_dir(self, model: str) -> Path:
        if not model or model.startswith(".") or "/" in model or "\\" in model:
            raise InvalidInput(f"model name {model!r} must be a plain folder name")
        return self.root / model

    def list_models(self) -> list[str]:
        """Names of the model folders (hidden folders excluded), sorted.

        Raises:
            NotFound: the repository folder does not exist.
        """
        if not self.root.is_dir():
            raise NotFound(f"{self.root}: model repository folder does not exist")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_versions(self, model: str) -> list[int]:
        """Versions on disk (positive integer folder names), ascending.

        Raises:
            NotFound: no such model folder.
        """
        d = self._model_dir(model)
        if not d.is_dir():
            raise NotFound(f"model {model!r} is not in the repository {self.root}")
        return sorted(int(p.name) for p in d.iterdir()
                      if p.is_dir() and p.name.isdigit() and int(p.name) > 0)

    def config_text(self, model: str) -> str:
        """Raw config.pbtxt text (for change detection: a new text means a new config).

        Raises:
            NotFound: the model or its config.pbtxt is missing.
        """
        path = self._model_dir(model) / CONFIG_FILE
        try:
            return path.read_text()
        except FileNotFoundError:
            raise NotFound(f"{path}: missing; every model needs a config.pbtxt") from None

    def read_config(self, model: str) -> mc.ModelConfig:
        """The parsed, checked config of a model.

        Raises:
            NotFound: the model or its config.pbtxt is missing.
            InvalidInput: the text does not parse, names another model, or is not for ONNX Runtime
                (either flavour).
        """
        path = self._model_dir(model) / CONFIG_FILE
        config = parse_config(self.config_text(model), where=str(path))
        if not config.name:
            config.name = model  # Triton fills it in from the folder name too
        if config.name != model:
            raise InvalidInput(f"{path}: name {config.name!r} differs from its folder {model!r}")
        if config.backend == PYTHON_BACKEND and not config.platform:
            return config  # the same model.onnx, served through Triton's Python backend
        if config.platform not in ("", PLATFORM) or config.backend not in ("", "onnxruntime"):
            raise InvalidInput(f"{path}: platform {config.platform!r} / backend {config.backend!r}; "
                               f"this server runs {PLATFORM} (or backend {PYTHON_BACKEND!r}) only")
        if not config.platform:
            config.platform = PLATFORM
        self._attach_class_names(config, path.parent)
        return config

    @staticmethod
    def _attach_class_names(config: mc.ModelConfig, model_dir: Path) -> None:
        """Put the label file's names in the class_names parameter (what clients read over the
        protocol), after checking them against num_classes and any names already there."""
        names = label_names_from_config(config, model_dir)
        if names is None:
            return
        where = model_dir / CONFIG_FILE
        given = config.parameters["class_names"].string_value if "class_names" in config.parameters else None
        if "num_classes" in config.parameters and config.parameters["num_classes"].string_value != str(len(names)):
            raise InvalidInput(f"{where}: the label file lists {len(names)} classes but num_classes is "
                               f"{config.parameters['num_classes'].string_value}; one name per class, in label order")
        if given is not None and json.loads(given) != list(names):
            raise InvalidInput(f"{where}: parameter class_names disagrees with the label file; write the names in one place")
        config.parameters["class_names"].string_value = json.dumps(list(names))

    def version_dir(self, model: str, version: int) -> Path:
        return self._model_dir(model) / str(version)

    def model_file(self, model: str, version: int, config: mc.ModelConfig | None = None) -> Path:
        """Path of a version's graph (config's default_model_filename, else model.onnx).

        Raises:
            NotFound: the file is missing.
        """
        name = (config.default_model_filename if config is not None else "") or DEFAULT_MODEL_FILE
        path = self.version_dir(model, version) / name
        if not path.is_file():
            raise NotFound(f"model {model!r} version {version}: {path} is missing")
        return path

    def write_config(self, model: str, config: mc.ModelConfig) -> bool:
        """Write config.pbtxt atomically; unchanged text is not rewritten (readers key reloads on it).
        Over an existing config, the existing flavour is kept (see the module doc).

        Returns:
            True if the file changed.
        """
        d = self._model_dir(model)
        d.mkdir(parents=True, exist_ok=True)
        self._write_label_file(config, d)
        path = d / CONFIG_FILE
        old = path.read_text() if path.is_file() else None
        flavour = self.default_flavour()
        if old is not None:
            try:
                flavour = flavour_of(parse_config(old, where=str(path)))
            except InvalidInput:
                pass  # an unreadable config is simply replaced
        if flavour is not None:
            config = with_flavour(config, flavour)
        text = format_config(config)
        if old == text:
            return False
        atomic_write_bytes(path, text.encode())
        return True

    def default_flavour(self) -> str | None:
        """The flavour new models' configs take (None: as written)."""
        try:
            flavour = (self.root / _FLAVOUR_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return flavour if flavour in FLAVOURS else None

    def set_default_flavour(self, flavour: str) -> None:
        """Make `flavour` the repository's: every model's config is switched to it now, and configs
        written later for new models take it.

        Raises:
            InvalidInput: unknown flavour.
        """
        if flavour not in FLAVOURS:
            raise InvalidInput(f"config flavour must be one of {FLAVOURS}, got {flavour!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / _FLAVOUR_FILE, f"{flavour}\n".encode())
        for model in self.list_models():
            if (self._model_dir(model) / CONFIG_FILE).is_file():
                self.set_flavour(model, flavour)

    def set_flavour(self, model: str, flavour: str) -> bool:
        """Switch a model's config.pbtxt to the "onnxruntime" or "python" flavour (module doc).

        Returns:
            True if the file changed.

        Raises:
            NotFound: no config. InvalidInput: unknown flavour or an unreadable config.
        """
        path = self._model_dir(model) / CONFIG_FILE
        config = with_flavour(parse_config(self.config_text(model), where=str(path)), flavour)
        text = format_config(config)
        if path.read_text() == text:
            return False
        atomic_write_bytes(path, text.encode())
        return True

    @staticmethod
    def _write_label_file(config: mc.ModelConfig, model_dir: Path) -> None:
        """The Triton label file named by an output, from the class_names parameter (before the
        config, so a reader that sees the config finds its file)."""
        files = {t.label_filename for t in config.output if t.label_filename}
        if not files or "class_names" not in config.parameters:
            return
        names = json.loads(config.parameters["class_names"].string_value)
        for name in files:
            path = model_dir / name
            text = "\n".join(names) + "\n"
            if not (path.is_file() and path.read_text() == text):
                atomic_write_bytes(path, text.encode())

    def publish(self, model: str, source: str | os.PathLike, config: mc.ModelConfig | None = None,
                before_rename: Callable[[Path], None] | None = None) -> int:
        """Publish a new version atomically as the next version number.

        The config (if given) is written first, so that a reader that sees the new version also sees
        the config it belongs to. Rollback is publishing an older version's folder again.

        Args:
            model: model folder name.
            source: a model.onnx file, or a folder whose files (model.onnx and any external data)
                all go into the version folder.
            config: the model's config.pbtxt; required for the first version.
            before_rename: called with the complete, fsynced temp folder just before it is renamed
                into place (the crash-consistency tests stop a publisher exactly there).

        Returns:
            The new version number.

        Raises:
            NotFound: `source` does not exist.
            FailedPrecondition: no config given and the model has none yet.
        """
        src = Path(source)
        if not src.exists():
            raise NotFound(f"{src}: nothing to publish")
        d = self._model_dir(model)
        if config is not None:
            if config.name and config.name != model:
                raise InvalidInput(f"config name {config.name!r} differs from the model {model!r}")
            self.write_config(model, config)
        elif not (d / CONFIG_FILE).is_file():
            raise FailedPrecondition(f"model {model!r} has no {CONFIG_FILE}; pass a config with its first version")
        tmp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=d))
        try:
            files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file())
            for f in files:
                dest = tmp / (DEFAULT_MODEL_FILE if src.is_file() else f.name)
                shutil.copyfile(f, dest)
                with open(dest, "rb+") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            if before_rename is not None:
                before_rename(tmp)
            while True:
                version = max(self.list_versions(model), default=0) + 1
                try:
                    os.rename(tmp, d / str(version))
                    break
                except OSError as e:
                    # another publisher took this number first: try the next one
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            fsync_dir(d)
            return version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def discard_unfinished_publishes(self, model: str) -> list[Path]:
        """Remove the temp folders of publishers that died before their rename (readers ignore
        them, but they hold a model's worth of disk each). Only safe while nobody else publishes
        this model: call it when the only publisher (the trainer) starts.

        Returns:
            The folders removed.
        """
        d = self._model_dir(model)
        if not d.is_dir():
            return []
        stale = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(_TEMP_PREFIX)]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return stale
