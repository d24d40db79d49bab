"""Training on real synthetic files: loss goes down, beats a constant predictor, resumes."""
import numpy as np
import pytest
import torch

from app.cli import main as cli
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.errors import InvalidInput, NotFound
from segxal.metrics import confusion_matrix, iou_report, mean_iou
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from segxal.train import (TrainConfig, evaluate_depth, evaluate_segmentation, load_model,
                          read_checkpoint, train_depth, train_segmentation)

SIZE = (64, 128)


def _datasets(root):
    train = SegDataset(list_frames(root, "train", require_labels=True), SIZE, with_depth=True)
    val = SegDataset(list_frames(root, "val", require_labels=True), SIZE)
    return train, val


def test_training_lowers_loss_and_beats_a_constant_predictor(tiny_dataset, tmp_path):
    train, val = _datasets(tiny_dataset)
    model = UNet(UNetConfig(width=8, depth=2))
    stats = train_segmentation(model, train, TrainConfig(epochs=8, batch_size=4, lr=5e-3, progress=False),
                               ckpt_path=tmp_path / "m.pt")
    assert stats["losses"][-1] < 0.8 * stats["losses"][0]
    ours = iou_report(evaluate_segmentation(model, val))["miou"]
    # the best constant predictor: the most frequent training class everywhere
    counts = np.bincount(np.concatenate([train.raw(i)[1].ravel() for i in range(len(train))]), minlength=256)
    majority = int(np.argmax(counts[:19]))
    cm = sum(confusion_matrix(np.full_like(val.raw(i)[1], majority), val.raw(i)[1]) for i in range(len(val)))
    assert ours > mean_iou(cm) + 0.05
    ck = read_checkpoint(tmp_path / "m.pt")
    assert ck["epoch"] == 8 and ck["kind"] == "unet"


class _DiesAt:
    """A dataset that raises after `n` items: a trainer killed mid-epoch."""

    def __init__(self, ds, n):
        self.ds, self.n, self.seen = ds, n, 0

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.seen += 1
        if self.seen > self.n:
            raise KeyboardInterrupt("killed")
        return self.ds[i]


def test_killed_training_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    train, _ = _datasets(tiny_dataset)
    small = train.subset(range(4))
    cfg = TrainConfig(epochs=3, batch_size=2, progress=False)
    torch.manual_seed(1)
    init = UNet(UNetConfig(width=4, depth=1)).state_dict()

    def fresh():
        m = UNet(UNetConfig(width=4, depth=1))
        m.load_state_dict(init)
        return m
    ref = fresh()
    train_segmentation(ref, small, cfg, ckpt_path=tmp_path / "ref.pt")
    victim = fresh()
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 3, after 2 checkpoints
        train_segmentation(victim, _DiesAt(small, 4 * 2 + 1), cfg, ckpt_path=tmp_path / "run.pt")
    assert read_checkpoint(tmp_path / "run.pt")["epoch"] == 2
    resumed = fresh()
    stats = train_segmentation(resumed, small, cfg, ckpt_path=tmp_path / "run.pt")
    assert len(stats["losses"]) == 1  # only the missing epoch ran
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    # a finished run is not re-run
    assert train_segmentation(load_model(tmp_path / "run.pt"), small, cfg, ckpt_path=tmp_path / "run.pt")["losses"] == []


def test_depth_net_learns_inverse_depth(tiny_dataset):
    train = SegDataset(list_frames(tiny_dataset, "train"), SIZE, with_labels=False, with_depth=True)
    model = DepthNet(DepthConfig(width=8, depth=2, disparity_scale=8.0))
    before = evaluate_depth(model, train)
    train_depth(model, train, TrainConfig(epochs=6, batch_size=4, lr=5e-3, progress=False))
    after = evaluate_depth(model, train)
    assert after["abs_rel"] < before["abs_rel"]
    assert after["delta_1.25"] > before["delta_1.25"]


def test_cli_reports_missing_folders_and_bad_sizes(tmp_path, capsys):
    assert cli(["train", "seg", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["train", "seg", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--size", "abc"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_loader_rejects_size_mismatch_and_unknown_ids(tiny_dataset, tmp_path):
    import shutil
    from segxal import imageio
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    frame = list_frames(root, "val", require_labels=True)[0]
    lab = imageio.read_label(frame.label)
    imageio.write_png(frame.label, np.full((lab.shape[0] // 2, lab.shape[1]), 7, np.uint8))
    with pytest.raises(InvalidInput, match="label size"):
        SegDataset([frame], SIZE)[0]
    imageio.write_png(frame.label, np.full(lab.shape, 250, np.uint8))
    with pytest.raises(InvalidInput, match="unknown Cityscapes label ids"):
        SegDataset([frame], SIZE)[0]
    frame.image.write_bytes(b"not a png")
    with pytest.raises(InvalidInput, match="not a readable image"):
        SegDataset([frame], SIZE)[0]
    with pytest.raises(NotFound):
        list_frames(root, "nosuchsplit")


def test_enet_class_weights_favour_rare_classes_and_absent_ones_weigh_nothing(tiny_dataset):
    from segxal.labels import IGNORE, NUM_CLASSES
    from segxal.train import class_pixel_counts, class_weights_for
    train, _ = _datasets(tiny_dataset)
    counts = class_pixel_counts(train)
    labels = np.concatenate([train.raw(i)[1].ravel() for i in range(len(train))])
    np.testing.assert_array_equal(counts, np.bincount(labels[labels != IGNORE], minlength=NUM_CLASSES)[:NUM_CLASSES])
    w = class_weights_for(train, "enet").numpy()
    p = counts / counts.sum()
    present = counts > 0
    np.testing.assert_allclose(w[present], 1 / np.log(1.02 + p[present]), rtol=1e-6)
    assert (w[~present] == 0).all()
    rare, common = np.argmin(np.where(present, counts, np.inf)), np.argmax(counts)
    assert w[rare] > 5 * w[common]
    assert class_weights_for(train, "none") is None
    with pytest.raises(InvalidInput, match="class weighting must be one of"):
        class_weights_for(train, "median")


def test_random_crops_cut_the_same_window_from_image_labels_and_depth(tiny_dataset, tmp_path):
    from segxal.train import _random_crop
    g = torch.Generator().manual_seed(0)
    img = torch.arange(2 * 3 * 8 * 16, dtype=torch.float32).reshape(2, 3, 8, 16)
    lab = img[:, 0].long()
    a, b = _random_crop((4, 8), g, img, lab)
    assert a.shape == (2, 3, 4, 8) and b.shape == (2, 4, 8)
    torch.testing.assert_close(a[:, 0].long(), b)  # the same window
    windows = {tuple(_random_crop((4, 8), g, img)[0][0, 0, 0, :1].tolist()) for _ in range(20)}
    assert len(windows) > 3  # it moves
    with pytest.raises(InvalidInput, match="larger than the training frames"):
        _random_crop((16, 8), g, img)
    # the CLI trains on crops and evaluates on whole frames
    assert cli(["train", "seg", "--data", str(tiny_dataset), "--out", str(tmp_path / "c.pt"), "--size", "64x128",
                "--crop", "32x64", "--width", "8", "--depth", "2", "--epochs", "1", "--no-progress"]) == 0
    assert cli(["train", "seg", "--data", str(tiny_dataset), "--out", str(tmp_path / "d.pt"), "--size", "64x128",
                "--crop", "30x64", "--width", "8", "--depth", "2", "--epochs", "1", "--no-progress"]) == 2
