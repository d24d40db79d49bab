"""Exploration (issue 32): HiResCAM (the element-wise gradient x activation, Draelos & Carin 2020) instead
of GradCAM's spatially averaged weights, with the ebu-gradient target, on the checkpoints a
`bench/cam_health.py --train --out runs/cam/ckpt` run saved. Not a product option: it met the health
bar at 8 of 15 checkpoints (docs/cam.md).

    python bench/cam_hirescam.py  # after the cam_health run; rows in runs/cam/hires.json
"""
import json

import numpy as np
import torch

from bench.cam_health import _val_frames, health_row
from segxal.data.cityscapes import MEAN, STD
from segxal.graph import traced_cam as tc
from segxal.models.external import ExternalModel, ExternalModelConfig

torch.set_num_threads(2)

class HiRes(tc.TracedExplainer):
    """The traced explainer with the CAM ReLU(sum_k dT/dA_k * A_k), per location (no spatial mean)."""

    def explain(self, x):
        from segxal.eem.ebu import prediction_statistics
        store = {}
        with tc.capture_activation(self.module, self.of_input, store), tc._ResizeRecorder() as rec, torch.enable_grad():
            full, z = self.scores(x, rec)
            a = store["a"]
            labels, ebu, pmax = prediction_statistics(z.movedim(1, -1), dim=-1)
            (grad,) = torch.autograd.grad(self.target(z, ebu).sum(), a)
        a, grad = a.detach(), grad.detach()
        ebu, pmax = ebu.detach(), pmax.detach()
        cam = tc._minmax(torch.relu((grad * a).sum(1)))
        cam = torch.nn.functional.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return labels, ebu, pmax, tc._minmax(cam), a.mean((2, 3))

images, truth = _val_frames("data/synth-128x256", 50)
rows = []
for arch in ["smp_deeplabv3plus", "smp_unet", "smp_fpn", "smp_pspnet", "segformer"]:
    for ep in (1, 3, 10):
        ck = torch.load(f"runs/cam/ckpt/{arch}/epoch{ep}.pt", map_location="cpu", weights_only=False)
        m = ExternalModel(ExternalModelConfig(**ck["config"])); m.inner.load_state_dict(ck["state_dict"]); m.eval()
        layer = tc.default_layer(m.inner, tuple(images.shape[1:3]))
        ex = HiRes(m.inner, layer, tc.make_target("ebu-gradient"), MEAN, STD, "input").eval()
        parts = []
        for i in range(0, len(images), 10):
            l, e, c, p, _ = ex(torch.from_numpy(images[i:i + 10]))
            parts.append([t.detach().numpy() for t in (l, e, c, p)])
        maps = tuple(np.concatenate(a) for a in zip(*parts))
        r = health_row(*maps, truth); r.update(arch=arch, epoch=ep)
        rows.append(r)
        ok = r["dead_share"] <= 0.05 and abs(r["corr_ebu"]) <= 0.3
        print(f"{arch:18s} {ep:2d} dead {r['dead_share']:.2f} corr_ebu {r['corr_ebu']:+.2f} corr_pmax {r['corr_pmax']:+.2f} {'OK' if ok else ''}", flush=True)
print(sum(r["dead_share"] <= 0.05 and abs(r["corr_ebu"]) <= 0.3 for r in rows), "/", len(rows))
json.dump(rows, open("runs/cam/hires.json", "w"), indent=1)
