"""`segxal up --backend triton`: the stack with one real Triton Inference Server in place of the
project's two inference servers. Models published afterwards with the native config (as the trainer
and the loop publish) are served by Triton (the repositories' default flavour), and the EEM
service scores a frame through it."""
import tritonclient.grpc as tg

from app.stack import Stack, StackConfig
from segxal.data.cityscapes import list_frames
from segxal.export import export_depth, export_segmentation
from segxal.storage import local_uri
from services.common.model_repository import ModelRepository, build_config, flavour_of
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from tests.inference_support import TRACE, tiny_depth, tiny_unet
from tests.triton_support import triton_install  # noqa: F401


def test_up_with_triton_serves_published_models_to_the_eem_service(triton_install, tiny_dataset, tmp_path):  # noqa: F811
    cfg = StackConfig(workdir=str(tmp_path / "work"), data=str(tiny_dataset), storage_roots=[str(tiny_dataset)],
                      size=(64, 128), width=4, unet_depth=2, epochs=1, torch_threads=1, backend="triton")
    with Stack(cfg) as stack:
        targets = stack.targets
        assert targets["segmentation"] == targets["depth"] == targets["triton"]
        for name, export in (("segmentation", export_segmentation), ("depth", export_depth)):
            model = tiny_unet(0) if name == "segmentation" else tiny_depth(1)
            result = export(model, tmp_path / name / "model.onnx", TRACE)
            repo = ModelRepository(stack.repo / name)
            repo.publish(name, result.path, build_config(name, result.spec))  # native, as the trainer writes
            assert flavour_of(repo.read_config(name)) == "python"
        stack.wait_serving("eem", timeout_s=120)  # Triton (poll mode) loaded both models
        with tg.InferenceServerClient(targets["triton"]) as c:
            assert c.get_server_metadata().name == "triton"
            assert c.get_model_metadata("segmentation").platform == "segxal_onnxruntime"
        frame = list_frames(tiny_dataset, "val")[0]
        with EemClient(targets["eem"]) as eem:
            scored = eem.score(local_uri(frame.image), ScoreOptions(regions=True))
        assert scored.ok, scored.error
        assert 0.0 <= scored.score <= 1.0 and scored.model_versions.segmentation == "segmentation:1"
    assert (tmp_path / "work" / "logs" / "triton" / "tritonserver.log").is_file()
