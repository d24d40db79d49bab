"""The model cache (segxal.cache) is keyed by every input: the data's path and content, and the
hyper-parameters. Through the in-process loop's real depth-net cache (segxal.al.loop)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from segxal.al.loop import ALConfig, depth_model_for
from segxal.cache import cache_path, data_identity
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.errors import InvalidInput


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _depth(data, tmp_path, **overrides):
    cfg = ALConfig(data=str(data), out=str(tmp_path / "out"), size=(32, 64), depth_epochs=1, batch_size=8,
                   cache_dir=str(tmp_path / "cache"), progress=False, **overrides)
    train = SegDataset(list_frames(data, "train", require_labels=True), cfg.size)
    return depth_model_for(cfg, train)


def _models(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").glob("*.pt"))


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_loop_reuses_its_depth_net_only_for_the_same_data_and_inputs(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    first = _depth(data, tmp_path)
    assert len(_models(tmp_path)) == 1
    assert _same(_depth(data, tmp_path), first)  # same data, same inputs: loaded, not trained again
    assert len(_models(tmp_path)) == 1

    _depth(data, tmp_path, lr=1e-3)  # another hyper-parameter: its own entry
    assert len(_models(tmp_path)) == 2

    # the same path holding other data (regenerated, replaced): its own entry, never the old model
    image = sorted((data / "leftImg8bit" / "train").rglob("*.png"))[0]
    image.write_bytes(image.read_bytes())
    os.utime(image, ns=(1, 1))
    _depth(data, tmp_path)
    assert len(_models(tmp_path)) == 3

    other = tmp_path / "other"  # the same frames at another path: another dataset as far as we know
    shutil.copytree(tiny_dataset, other)
    _depth(other, tmp_path)
    assert len(_models(tmp_path)) == 4


def test_the_key_is_written_beside_the_file_in_plain_words(tiny_dataset, tmp_path):
    path = cache_path(tmp_path / "c", "seed0", data=tiny_dataset, lr=0.002, size=(64, 128), idx=[3, 1])
    key = path.with_suffix(".json").read_text()
    assert str(tiny_dataset.resolve()) in key and '"lr": 0.002' in key and data_identity(tiny_dataset)["digest"] in key
    assert cache_path(tmp_path / "c", "seed0", data=tiny_dataset, lr=0.002, size=(64, 128), idx=[3, 1]) == path
    assert cache_path(tmp_path / "c", "seed0", data=tiny_dataset, lr=0.002, size=(64, 128), idx=[1, 3]) != path


def test_a_missing_data_folder_is_refused_by_name(tmp_path):
    with pytest.raises(InvalidInput, match="nowhere does not exist"):
        cache_path(tmp_path, "depth", data=tmp_path / "nowhere")
