"""The one cache of trained models (the depth net, the seed model) shared between runs: a file
whose name holds a digest of every input that made it, so a run on other data or with other
hyper-parameters never loads a model trained for another (docs/design.md, "Storage").

The data enters the key by its resolved path and its content identity: every file's relative path,
size and modification time. Regenerating, editing or replacing a dataset at the same path changes
the key; the cost is one `stat` per file (milliseconds for Cityscapes' 25,000 files).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from segxal.errors import InvalidInput

__all__ = ["cache_path", "data_identity"]


def data_identity(root: str | os.PathLike) -> dict:
    """What identifies a dataset folder's content.

    Args:
        root: the dataset folder (e.g. Cityscapes layout).

    Returns:
        {"path": resolved path, "files": file count, "digest": sha1 of (relative path, size, mtime)}.

    Raises:
        InvalidInput: `root` is not a folder.
    """
    base = Path(root).resolve()
    if not base.is_dir():
        raise InvalidInput(f"data folder {root} does not exist")
    h, count = hashlib.sha1(), 0
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()  # a stable walk order: the digest must not depend on the file system's
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = path.stat()
            h.update(f"{path.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
    return {"path": str(base), "files": count, "digest": h.hexdigest()}


def _plain(value: Any) -> Any:
    """A JSON-able form of a key value: dataclasses as dicts, paths and other objects as str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def cache_path(base: str | os.PathLike, name: str, *, data: str | os.PathLike, suffix: str = ".pt",
               **inputs: Any) -> Path:
    """The cache file for a model trained on `data` with `inputs`; writes the key beside it.

    Args:
        base: the cache folder (made when missing).
        name: what is cached ("depth", "seed0"): the start of the file name.
        data: the dataset folder the model is trained on; enters the key by content identity.
        suffix: the file's ending.
        **inputs: every other input of the training: hyper-parameters, sizes, seeds, index lists.

    Returns:
        <base>/<name>_<digest><suffix>; the caller loads it when it exists, else trains and saves
        there. <base>/<name>_<digest>.json holds the key in plain words (what made the file).

    Raises:
        InvalidInput: `data` is not a folder.
    """
    key = {"data": data_identity(data), **inputs}
    text = json.dumps(key, sort_keys=True, default=_plain)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    folder = Path(base)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{digest}{suffix}"
    described = path.with_suffix(".json")
    if not described.is_file():
        described.write_text(json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n")
    return path
