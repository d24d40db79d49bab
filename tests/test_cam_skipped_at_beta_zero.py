"""A ranking whose beta is 0 does not pay for the CAM: the EEM service leaves `cam` out of its
inference request, and the inference server runs it on a copy of the graph cut down to the outputs
asked for (ONNX Runtime itself runs every node whatever a run asks for)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segxal import imageio
from segxal.eem.options import EEMOptions
from services.eem.api import ScoreOptions
from tests.eem_stack_support import eem_stack
from tests.inference_support import export_models, images, make_repository


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_models(tmp_path_factory.mktemp("exports"), seeds=(0,))


def _executed_nodes(path: str, outputs: list[str], feed: dict, tmp) -> set[str]:
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / f"prof_{len(outputs)}")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    sess.run(outputs, feed)
    events = json.loads(open(sess.end_profiling()).read())
    return {e["name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}


def test_onnx_runtime_runs_every_node_whatever_the_outputs_asked(exports, tmp_path):
    """Why the server cuts the graph: ORT alone would compute the CAM for a run that drops it."""
    seg = exports["segmentation"][0]
    sess = ort.InferenceSession(str(seg.path), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: images(1)}
    names = [o.name for o in sess.get_outputs()]
    assert "cam" in names
    every = _executed_nodes(str(seg.path), names, feed, tmp_path)
    assert _executed_nodes(str(seg.path), [n for n in names if n != "cam"], feed, tmp_path) == every


def test_a_request_without_cam_runs_on_a_graph_without_the_cams_nodes(exports, tmp_path):
    from services.inference.config import RuntimeConfig
    from services.inference.runtime import OnnxModel
    seg = exports["segmentation"][0]
    repo = make_repository(tmp_path / "repo", exports)
    model = OnnxModel(seg.path, repo.read_config("segmentation"), RuntimeConfig())
    feed = {model.inputs[0].spec.name: images(1)}
    full = model.run(feed, model.output_names)
    wanted = [n for n in model.output_names if n != "cam"]
    cut = model.run(feed, wanted)
    for n in wanted:  # the same values, from a graph with fewer nodes
        np.testing.assert_array_equal(cut[n], full[n])
    full_nodes = len(onnx.load(str(seg.path)).graph.node)
    assert model.pruned_node_counts[frozenset(wanted)] < full_nodes - 10


def test_eem_service_scores_beta_zero_without_asking_for_the_cam(exports, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    imageio.write_png(frames / "f.png", images(1, seed=3)[0])
    make_repository(tmp_path / "repo", exports)
    with eem_stack(tmp_path / "repo", frames) as client:
        uri = str(frames / "f.png")
        with_cam = client.score(uri, ScoreOptions(maps=("cam", "ebu"))).raise_for_error()
        no_cam = client.score(uri, ScoreOptions(eem=EEMOptions(alpha=1.0, beta=0.0),
                                                maps=("cam", "ebu"))).raise_for_error()
    assert with_cam.map("cam").max() > 0  # the served CAM is alive at beta 0.5
    assert no_cam.map("cam").max() == 0  # never computed at beta 0: no CAM came back
    assert no_cam.score == pytest.approx(float(no_cam.map("ebu").mean()), abs=2e-3)  # EBU alone
