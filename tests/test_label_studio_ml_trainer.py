"""The ML backend's /webhook with --forward trainer: an annotation saved in Label Studio (the
webhook body as Label Studio 1.23 sends it, brush RLE by label_studio_sdk's own encoder) starts a
job on the real trainer server, which trains on exactly that mask for that frame."""
from __future__ import annotations

import json
import urllib.request

import numpy as np

from clients.label_studio import project as lsp
from clients.label_studio.ml_backend import MLBackendServer
from clients.label_studio.ml_model import MLBackendConfig, SegxalMLModel
from segxal import imageio
from segxal.labels import IGNORE, NAME_TO_TRAIN_ID
from services.trainer.api import JobSpec
from services.trainer.client import TrainerClient
from services.trainer.jobs import SPEC_FILE
from tests.labeling_support import sdk_brush
from tests.trainer_support import pool_frames, running_trainer, trainer_config


def test_webhook_starts_a_trainer_job_on_the_annotation(ls_tools, tiny_dataset, tmp_path):
    frame = pool_frames(tiny_dataset)[0].image
    h, w = imageio.read_rgb(frame).shape[:2]
    car = np.zeros((h, w), bool)
    car[20:40, 30:90] = True
    (rle,) = sdk_brush([{"op": "mask2rle", "mask": (car.astype(np.uint8) * 255).tolist()}])
    result = [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
               "original_height": h, "value": {"format": "rle", "rle": rle, "brushlabels": ["car"]}}]
    root = tiny_dataset.parent
    body = {"action": "ANNOTATION_CREATED", "project": {"id": 4},
            "annotation": {"id": 17, "result": result, "task": 9, "updated_at": "2026-11-29T20:00:00Z"},
            "task": {"id": 9, "data": {lsp.FRAME_KEY: f"/data/local-files/?d={frame.relative_to(root).as_posix()}"}}}
    with running_trainer(trainer_config(tiny_dataset, tmp_path / "trainer", epochs=1)) as trainer, \
            TrainerClient(trainer.target) as client:
        cfg = MLBackendConfig(port=0, forward="trainer", trainer=trainer.target, ls_document_root=str(root),
                              basic_auth_user="label-studio", basic_auth_pass="s3cret")
        with MLBackendServer(cfg, model=SegxalMLModel(cfg, eem=None, trainer=client)) as backend:
            req = urllib.request.Request(backend.url + "/webhook", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": cfg.auth_header})
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, reply = resp.status, json.loads(resp.read())
        assert status == 202 and reply["status"] == "training"
        job = client.get_job(reply["job_id"])
        assert job.spec.annotation_count == 1
        # The job's spec as the trainer saved it (the client's view carries no annotations).
        spec = JobSpec.from_json(json.loads((tmp_path / "trainer" / "state" / "jobs" / job.job_id / SPEC_FILE).read_text()))
        mine = [a for a in spec.annotations if a.annotation_id.startswith("label-studio-ml:4:17:")]
        assert len(mine) == 1 and mine[0].frame_uri == str(frame)
        mask = imageio.decode_image(mine[0].mask_png, mode=None)
        expected = np.where(car, NAME_TO_TRAIN_ID["car"], IGNORE).astype(np.uint8)
        np.testing.assert_array_equal(mask, expected)
        client.wait(reply["job_id"], timeout_s=600)
