"""segxal.data.synth became a package (config, camera, textures, world, traffic, static, objects,
light, frames, dataset, cli): the same public API, and the same bytes for the same config as the
single module it was, which is read from git history and run side by side. Since format version 2
the package also writes each frame's instanceIds, which the module did not."""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from segxal.data import synth

REPO = Path(__file__).resolve().parents[1]
BEFORE = "1ec547d861216818f8842c7504f9e4d1c34c8cfc"  # the last commit of segxal/data/synth.py as one module


def _module_before(tmp_path: Path, monkeypatch):
    try:
        source = subprocess.run(["git", "show", f"{BEFORE}:segxal/data/synth.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git history of segxal/data/synth.py is not available here")
    path = tmp_path / "synth_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("synth_before", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "synth_before", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kw", [dict(seed=3), dict(seed=5, weather_weights={"rain": 1.0, "fog": 1.0},
                                                   time_weights={"night": 1.0, "dusk": 1.0})])
def test_the_package_writes_the_bytes_the_module_wrote(tmp_path, monkeypatch, kw):
    before = _module_before(tmp_path, monkeypatch)
    args = dict(height=64, width=128, train_sequences=2, val_sequences=1, test_sequences=1, frames_per_sequence=2, **kw)
    old = before.generate(before.SynthConfig(**args), tmp_path / "before")
    new = synth.generate(synth.SynthConfig(**args), tmp_path / "after")
    old_files, new_files = _files(old), _files(new)
    added = sorted(set(new_files) - set(old_files))
    labels = [n for n in old_files if n.endswith("_gtFine_labelIds.png")]
    assert set(old_files) <= set(new_files) and len(new_files) > 20
    assert added == sorted(n.replace("_labelIds", "_instanceIds") for n in labels)
    different = [name for name in old_files if old_files[name] != new_files[name]]
    assert different == [synth.SIDECAR], different
    sidecar_old, sidecar_new = (json.loads(f[synth.SIDECAR]) for f in (old_files, new_files))
    assert (sidecar_old.pop("format_version"), sidecar_new.pop("format_version")) == (1, 2)
    assert sidecar_old == sidecar_new


def test_the_public_api_is_unchanged(tmp_path, monkeypatch):
    before = _module_before(tmp_path, monkeypatch)
    tree = ast.parse(Path(before.__file__).read_text())
    public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    public = {n for n in public if not n.startswith("_") and n != "log"}
    assert public == set(synth.__all__)
    for name in public:
        assert getattr(synth, name) is not None
