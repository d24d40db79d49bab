"""The model repository's two config flavours (no Triton needed): native `onnxruntime_onnx`
(the default) and the Python-backend one (`backend: "segxal_onnxruntime"`), which differ in
platform/backend only; a repository keeps its flavour when a config is written over it; the
project's server serves both."""
import pytest

from segxal.errors import InvalidInput
from segxal.export import export_segmentation
from services.common.model_repository import (PLATFORM, PYTHON_BACKEND, ModelRepository, build_config,
                                              flavour_of, with_flavour)
from services.inference.client import InferenceClient
from tests.inference_support import TRACE, images, running_server, tiny_unet


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_segmentation(tiny_unet(0), tmp_path_factory.mktemp("flavour") / "seg" / "model.onnx", TRACE)


def test_flavours_differ_in_platform_and_backend_only(export):
    native = build_config("segmentation", export.spec)
    python = build_config("segmentation", export.spec, flavour="python")
    assert (native.platform, native.backend, flavour_of(native)) == (PLATFORM, "", "onnxruntime")
    assert (python.platform, python.backend, flavour_of(python)) == ("", PYTHON_BACKEND, "python")
    assert with_flavour(python, "onnxruntime") == native and with_flavour(native, "python") == python
    with pytest.raises(InvalidInput, match="flavour"):
        build_config("segmentation", export.spec, flavour="tensorrt")


def test_a_written_config_keeps_the_repositorys_flavour(export, tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish("segmentation", export.path, build_config("segmentation", export.spec))
    assert repo.set_flavour("segmentation", "python") and not repo.set_flavour("segmentation", "python")
    # a trainer publishing with the native config (build_config's default) leaves it as Triton serves it
    assert repo.publish("segmentation", export.path, build_config("segmentation", export.spec)) == 2
    assert flavour_of(repo.read_config("segmentation")) == "python"
    assert repo.set_flavour("segmentation", "onnxruntime")
    assert repo.read_config("segmentation") == build_config("segmentation", export.spec)


def test_the_project_server_serves_the_python_flavour_alike(export, tmp_path):
    native, python = ModelRepository(tmp_path / "native"), ModelRepository(tmp_path / "python")
    native.publish("segmentation", export.path, build_config("segmentation", export.spec))
    python.publish("segmentation", export.path, build_config("segmentation", export.spec, flavour="python"))
    x = images(2)
    with running_server(native) as a, running_server(python) as b, \
            InferenceClient(a.target) as ca, InferenceClient(b.target) as cb:
        out_a, out_b = ca.infer_segmentation(x), cb.infer_segmentation(x)
        for k in ("labels", "ebu", "cam", "pmax"):
            assert (out_a[k] == out_b[k]).all(), k
        assert cb.model_spec("segmentation") == ca.model_spec("segmentation")


def test_a_repositorys_default_flavour_applies_to_existing_and_new_models(export, tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish("old", export.path, build_config("old", export.spec))
    repo.set_default_flavour("python")
    assert repo.default_flavour() == "python" and repo.list_models() == ["old"]  # the marker is no model
    repo.publish("new", export.path, build_config("new", export.spec))  # a first config, native as written
    assert flavour_of(repo.read_config("old")) == flavour_of(repo.read_config("new")) == "python"
    with pytest.raises(InvalidInput, match="flavour"):
        repo.set_default_flavour("tensorrt")
