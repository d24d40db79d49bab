"""Shared fixtures: a tiny synthetic Cityscapes-layout dataset, generated once per session."""
import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """64x128 frames: 6 train, 2 val, 1 test sequences of 4 frames (real generator, real files)."""
    from segxal.data.synth import SynthConfig, generate
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(SynthConfig(height=64, width=128, train_sequences=6, val_sequences=2,
                         test_sequences=1, frames_per_sequence=4, seed=7), out)
    return out


@pytest.fixture(scope="session")
def ls_tools():
    """Label Studio's own venv (scripts/setup_label_studio.sh); skips only when it cannot be made."""
    from tests.labeling_support import setup_label_studio
    try:
        return setup_label_studio()
    except RuntimeError as e:
        pytest.skip(f"the Label Studio venv cannot be made here (no package index?): {e}")


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory):
    """name -> (model, zoo entry, EEM ONNX path, EEMGraphInfo), built and exported once per session."""
    from segxal.graph.add_eem import add_eem_file
    from segxal.models import zoo
    from segxal.models.external import export_logits_onnx
    from tests.zoo_support import H, NUM_CLASSES, W
    root = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name: str):
        if name not in cache:
            model, entry = zoo.build(name, NUM_CLASSES)
            raw = export_logits_onnx(model, root / name / "logits.onnx", (H, W))
            info = add_eem_file(raw, root / name / "model.onnx")
            cache[name] = (model, entry, root / name / "model.onnx", info)
        return cache[name]
    return get
