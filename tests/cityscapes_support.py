"""cityscapesscripts' stock pixel-level evaluator, run as its installed command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# cityscapesscripts 2.3.0 calls numpy.in1d, which NumPy 2.4 (pinned here) removed: the command runs
# with that one name put back as numpy.isin (what in1d became), through a sitecustomize on its
# PYTHONPATH; it is otherwise the installed console script, unchanged.
_IN1D_SHIM = """import numpy
if not hasattr(numpy, "in1d"):
    numpy.in1d = lambda a, b, assume_unique=False, invert=False: numpy.isin(
        numpy.ravel(a), b, assume_unique=assume_unique, invert=invert)
"""


def run_pixel_level_evaluator(dataset: Path, results: Path, work: Path) -> dict:
    """`csEvalPixelLevelSemanticLabeling` with CITYSCAPES_DATASET=dataset (its gtFine/val is the
    ground truth, instanceIds included) and CITYSCAPES_RESULTS=results (one <city>_<seq>_<frame>*.png
    labelIds prediction per ground-truth frame).

    Returns:
        its resultPixelLevelSemanticLabeling.json (classScores, classInstScores, averageScoreClasses...).
    Raises:
        AssertionError: the command failed (with its output).
    """
    shim, export_dir = work / "numpy_in1d", work / "evaluation"
    shim.mkdir(parents=True, exist_ok=True)
    export_dir.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(_IN1D_SHIM)
    env = {**os.environ, "CITYSCAPES_DATASET": str(dataset), "CITYSCAPES_RESULTS": str(results),
           "CITYSCAPES_EXPORT_DIR": str(export_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    evaluator = Path(sys.executable).parent / "csEvalPixelLevelSemanticLabeling"
    run = subprocess.run([str(evaluator)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "Unable to load" not in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((export_dir / "resultPixelLevelSemanticLabeling.json").read_text())
