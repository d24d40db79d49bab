"""`segxal loop --oracle label-studio` end to end: the five services, a local Label Studio started by
the loop from its own venv, a bridge per cycle, and a "person" who, like someone in the browser,
opens each task of the project, repaints the pre-annotated EEM regions with the true classes and
saves, through Label Studio's own API. The loop must wait for the people, train on what they saved
and publish; the coordinator must hold exactly what they painted."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from clients.label_studio import brush
from clients.label_studio.api import LabelStudioAPI
from clients.simulated_human import GroundTruth, cityscapes_id
from segxal import imageio
from segxal.al.loop import ALConfig
from segxal.errors import InvalidInput, NotReady
from segxal.labels import CLASS_NAMES, IGNORE
from services.common.server import ServerConfig
from services.coordinator.client import CoordinatorClient
from services.coordinator.config import CoordinatorConfig
from services.coordinator.server import CoordinatorServer
from app.label_studio_oracle import PROJECT_TITLE, LabelStudioOracleConfig
from app.loop import ServicesLoopConfig
from app.loop import run as run_services
from tests.labeling_support import LS_VENV


class Person(threading.Thread):
    """Labels every unannotated task of the loop's project: the true class on every pixel of the
    pre-annotated regions (what a careful labeler fixes), nothing outside them."""

    def __init__(self, connection: Path, truth: GroundTruth):
        super().__init__(name="person", daemon=True)
        self.connection, self.truth = connection, truth
        self.stop = threading.Event()
        self.painted: dict[str, np.ndarray] = {}  # coordinator task id -> trainIds saved (255 = not painted)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.connection.is_file():
                if self.stop.wait(0.2):
                    return
            info = json.loads(self.connection.read_text())
            api = LabelStudioAPI(info["url"], info["token"])
            while not self.stop.wait(0.3):
                project = api.find_project(info["project_title"])
                if project is not None:
                    for task in api.iter_tasks(project["id"]):
                        if not task.get("annotations") and task.get("predictions"):
                            self._label(api, task)
        except NotReady:
            pass  # the loop has stopped its Label Studio: the run is over
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _label(self, api: LabelStudioAPI, task: dict) -> None:
        results = task["predictions"][0]["result"]
        h, w = results[0]["original_height"], results[0]["original_width"]
        regions = np.zeros((h, w), bool)
        for r in results:
            regions |= brush.decode_alpha(r["value"]["rle"], h, w) >= 128
        truth = self.truth.train_ids(cityscapes_id(task["data"]["segxal_frame_uri"]), (h, w))
        labels = np.where(regions, truth, IGNORE).astype(np.uint8)
        strokes = [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
                    "original_height": h, "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush.encode_mask(labels == c), "brushlabels": [CLASS_NAMES[c]]}}
                   for c in np.unique(labels[labels != IGNORE])]
        api.create_annotation(task["id"], strokes, lead_time=3.0)
        self.painted[task["data"]["segxal_task_id"]] = labels


def test_the_loop_waits_for_people_in_label_studio_and_trains_on_what_they_saved(ls_tools, tiny_dataset, tmp_path):
    out, work = tmp_path / "run", tmp_path / "services"
    cfg = ALConfig(data=str(tiny_dataset), out=str(out), size=(64, 128), width=8, unet_depth=2, seed_frames=6,
                   cycles=2, budget=4, init_epochs=2, finetune_epochs=1, depth_epochs=1, batch_size=4,
                   oracle="label-studio", progress=False, cache_dir=str(tmp_path / "cache"))
    person = Person(work / "label-studio" / "connection.json", GroundTruth(str(tiny_dataset)))
    person.start()
    try:
        report = run_services(ServicesLoopConfig(
            al=cfg, workdir=str(work), drive_log_frames=3, overlays=1, miou_tolerance=1.0,
            label_studio=LabelStudioOracleConfig(venv=str(LS_VENV), wait_s=300)))
    finally:
        person.stop.set()
        person.join(10)
    assert person.error is None, person.error
    cycles = report["cycles"][1:]
    assert len(cycles) >= 1 and all(c["submitted"] == c["tasks"] >= 1 and c["released"] == 0 for c in cycles)
    assert [c["model_version"] for c in report["cycles"]] == list(range(1, len(report["cycles"]) + 1))
    assert all(c["mean_dice"] is not None for c in cycles)  # DICE of prediction vs the people's labels
    assert len(person.painted) == sum(c["tasks"] for c in cycles)
    # The local Label Studio is stopped with the loop; its login was written down for the people.
    info = json.loads((work / "label-studio" / "connection.json").read_text())
    assert info["project_title"] == PROJECT_TITLE and info["username"] and info["password"]
    assert not LabelStudioAPI(info["url"], info["token"], timeout_s=2).health()
    # The coordinator holds exactly what the person painted (inside the regions; nothing outside).
    # The services are gone: read the annotations through a fresh coordinator on the run's database.
    server = CoordinatorServer(CoordinatorConfig(db=f"sqlite:///{work / 'coordinator.db'}",
                                                 storage=str(work / "storage"),
                                                 server=ServerConfig(address="127.0.0.1:0")))
    server.start()
    try:
        with CoordinatorClient(server.target) as coord:
            pool = coord.get_pool(name="train-pool")
            anns = {a.task_id: a for a in coord.annotations(pool.pool_id)}
    finally:
        server.stop()
    assert anns.keys() == person.painted.keys()
    for task_id, painted in person.painted.items():
        np.testing.assert_array_equal(imageio.read_label(anns[task_id].mask_uri), painted)


def test_label_studio_options_are_checked_before_anything_starts(tiny_dataset, tmp_path):
    cfg = ALConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), oracle="label-studio", progress=False)
    with pytest.raises(InvalidInput, match="--ls-url needs --ls-token"):
        run_services(ServicesLoopConfig(al=cfg, label_studio=LabelStudioOracleConfig(url="http://127.0.0.1:1")))
    with pytest.raises(InvalidInput, match="label-studio: `segxal loop` only"):
        from segxal.al.loop import run as run_in_process
        run_in_process(cfg)
    assert not (tmp_path / "run").exists()  # nothing started, nothing written

