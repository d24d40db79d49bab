"""The benchmark's training setting: a frozen U-Net body trained once, a small decoder trained per budget point.

Why: on a shared 2-core machine a full U-Net fine-tune per budget point costs ~25 s, so three seeds
were all the benchmark could afford, and three seeds cannot resolve 0.5 mIoU. Here a
U-Net is trained once on a disjoint labelled set (a second synthetic dataset, never pool,
validation or test) and everything but its last decoder stage and head is frozen: the encoder, the
bottleneck and the deeper decoder stages. What the last stage reads (the upsampled deeper features
beside the stem's skip) is computed once for every frame and its mirror image and kept in memory,
so a budget point trains only the last stage and the 1x1 head on cached features (seconds). The
last stage and head are re-initialised per seed: model 0 learns them from the seed set alone.

What this costs in realism: the body does not adapt to the acquired labels (a team that fine-tunes
a pretrained backbone gets some of its gains there), so label gains are smaller than with full
fine-tuning; the embedding the diversity arms use (the bottleneck's, UNet.embed) does not move
between cycles; and the CAM's path from the bottleneck crosses two trainable layers only.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from segxal.labels import IGNORE, NUM_CLASSES
from segxal.models.unet import UNet



def trainable_prefixes(model: UNet) -> tuple[str, ...]:
    """The parameters trained per budget point: the last decoder stage and the head."""
    return (f"dec.{len(model.dec) - 1}.", "head.")


@dataclass
class Features:
    """What the last decoder stage reads for every frame of a split, for the frame and its mirror
    image (flip augmentation), float32, on the CPU: cat(up(deeper decoder output), stem skip)."""
    x: torch.Tensor  # [2, N, 2 * width, H / s, W / s]: [0] the frames, [1] their mirror images
    embedding: np.ndarray  # float32 [N, D]: the frame embedding (frame_embedding), L2-normalised

    def __len__(self) -> int:
        return self.x.shape[1]


def frame_embedding(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """The product's frame embedding of x [B, 3, H, W] -> [B, D], L2-normalised (UNet.embed)."""
    return model.embed(x)


def _last_stage_input(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """What model.dec[-1] reads for images x: the frozen body's output."""
    h, skips = model.encode(x)
    h = model.bottleneck_dropout(h)
    n = len(model.dec)
    for j, (up, dec, skip) in enumerate(zip(model.up, model.dec, reversed(skips))):
        cat = torch.cat([up(h), skip], dim=1)
        if j == n - 1:
            return cat
        h = dec(cat)
    raise AssertionError("unreachable")


@torch.no_grad()
def encode_split(model: UNet, images: np.ndarray, batch: int = 32) -> Features:  # on the model's device
    """The frozen body's outputs for images [N, 3, H, W] (normalised float32), each frame and its mirror.

    Args:
        model: a U-Net whose body is the frozen one (eval mode is set here).
        images: the split's frames.
        batch: frames per forward pass.

    Returns:
        the Features of the split.
    """
    model.eval()
    dev = next(model.parameters()).device
    xs: list[list[torch.Tensor]] = [[], []]
    embs = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch]).to(dev)
        xs[0].append(_last_stage_input(model, x))
        xs[1].append(_last_stage_input(model, x.flip(-1)))
        embs.append(frame_embedding(model, x))
    return Features(torch.stack([torch.cat(xs[0]), torch.cat(xs[1])]),
                    torch.cat(embs).cpu().numpy().astype(np.float32))


def freeze_body(model: UNet) -> UNet:
    """Every parameter but the last decoder stage's and the head's stops training; returns the model."""
    keep = trainable_prefixes(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    return model


def fresh_decoder(body_model: UNet, seed: int, num_classes: int = NUM_CLASSES) -> UNet:
    """The trained U-Net's frozen body with a last decoder stage and a head for `num_classes`
    classes initialised from `seed` (the body may have been trained on other classes)."""
    torch.manual_seed(seed)
    model = UNet(replace(body_model.cfg, num_classes=num_classes))
    keep = trainable_prefixes(model)
    body = {k: v for k, v in body_model.state_dict().items() if not k.startswith(keep)}
    model.load_state_dict(body, strict=False)
    return freeze_body(model.to(next(body_model.parameters()).device))


def enet_weights(masks: list[np.ndarray]) -> torch.Tensor:
    """ENet class weights 1 / ln(1.02 + p_c) over the labelled pixels of `masks` (segxal.train's
    'enet' rule; absent classes 0)."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    for m in masks:
        v = m[m != IGNORE].astype(np.int64)
        counts += np.bincount(v, minlength=NUM_CLASSES)[:NUM_CLASSES]
    p = counts / max(1, counts.sum())
    w = 1.0 / np.log(1.02 + p)
    w[counts == 0] = 0.0
    return torch.tensor(w, dtype=torch.float32)


def _logits(model: UNet, x: torch.Tensor, head_dropout: float = 0.0, sample: bool = False) -> torch.Tensor:
    """Logits [B, C, H, W] from the last stage's input; head-input dropout when sampling (training, BALD)."""
    a = model.dec[-1](x)
    if head_dropout and sample:
        a = F.dropout(a, head_dropout, training=True)
    return model.upsample(model.head(a))


def train_decoder(init: UNet, feats: Features, masks: dict[int, np.ndarray], steps: int, batch: int,
                  lr: float, seed: int, weight_decay: float = 1e-4, head_dropout: float = 0.0) -> UNet:
    """A copy of `init` whose decoder and head trained `steps` AdamW steps (cosine LR) on cached
    encoder features.

    Args:
        init: the starting model (its encoder is frozen and stays so).
        feats: the encoder outputs of the split the indices of `masks` refer to.
        masks: frame index -> label mask uint8 [H, W] (255 = not labelled).
        steps: optimiser steps (each of `batch` frames; frames in successive seeded permutations,
            each seen equally often; a coin per step mirrors the batch).
        batch: frames per step.
        lr: peak learning rate.
        seed: the data order and flip stream.
        weight_decay: AdamW's.
        head_dropout: dropout on the head's input while training (BALD samples it, see bald).

    Returns:
        the trained copy, in eval mode.
    """
    torch.manual_seed(seed)  # the dropout masks
    dev = feats.x.device
    model = freeze_body(copy.deepcopy(init)).to(dev)
    idx = np.array(sorted(masks))
    rng = np.random.default_rng(seed)
    n_items = steps * batch
    order = np.concatenate([rng.permutation(idx) for _ in range(math.ceil(n_items / len(idx)))])[:n_items]
    labels = torch.from_numpy(np.stack([masks[i] for i in idx]).astype(np.int64)).to(dev)  # [L, H, W]
    row = {int(i): r for r, i in enumerate(idx)}
    weight = enet_weights([masks[i] for i in idx]).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.eval()  # the frozen body's BatchNorm statistics stay
    model.dec[-1].train()
    flips = rng.random(steps) < 0.5
    for s in range(steps):
        sel = order[s * batch:(s + 1) * batch]
        f = int(flips[s])
        t = torch.from_numpy(sel).to(dev)
        lab = labels[torch.tensor([row[int(i)] for i in sel], device=dev)]
        if f:
            lab = lab.flip(-1)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * s / steps))
        z = _logits(model, feats.x[f, t], head_dropout, sample=True)
        loss = F.cross_entropy(z, lab, weight=weight, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: UNet, feats: Features, batch: int = 64) -> np.ndarray:
    """Predicted trainIds uint8 [N, H, W] of every frame of the split (unflipped)."""
    model.eval()
    out = []
    for s in range(0, len(feats), batch):
        sl = slice(s, s + batch)
        out.append(_logits(model, feats.x[0, sl]).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def bald(model: UNet, feats: Features, samples: int, head_dropout: float, batch: int = 16) -> np.ndarray:
    """BALD mutual information float16 [N, H, W] of every frame from `samples` MC-dropout passes of
    the head-input dropout the trainable stage learned with (the frozen body is deterministic, so
    only the last stage and head run per sample, on cached features). The class probabilities are
    taken on the head's grid (1/head_stride of the frame, where the logits are computed) and the
    map is resized to the frame: the same ranking at a quarter of the softmax cost.

    Raises:
        ValueError: head_dropout is 0 (nothing to sample).
    """
    if not head_dropout:
        raise ValueError("BALD needs head_dropout > 0")
    torch.manual_seed(0)
    model.eval()
    out = []
    for s in range(0, len(feats), batch):
        a = model.dec[-1](feats.x[0, s:s + batch])  # [B, K, h, w]: deterministic, once per batch
        probs = torch.stack([model.head(F.dropout(a, head_dropout, training=True)).softmax(1)
                             for _ in range(samples)])  # [T, B, C, h, w]
        mean = probs.mean(0)  # [B, C, h, w]
        h_mean = -(mean * (mean + 1e-12).log()).sum(1)  # entropy of the mean
        mean_h = -(probs * (probs + 1e-12).log()).sum(2).mean(0)  # mean entropy
        mi = model.upsample((h_mean - mean_h).clamp_min(0)[:, None])[:, 0]  # [B, H, W]
        out.append(mi.cpu().numpy().astype(np.float16))
    return np.concatenate(out)
