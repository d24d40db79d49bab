"""A pool labelled in its own four classes (a label map's, not Cityscapes'): the Label Studio label
config, pre-annotations and their reading back, the ML backend's /setup and /webhook through the
real coordinator, and the simulated human's mistakes, which stay inside the pool's classes. The same
flow against a real Label Studio is in tests/test_labeling_label_studio.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clients.label_studio import brush
from clients.label_studio import project as lsp
from clients.label_studio.ml_backend import MLBackendServer
from clients.label_studio.ml_model import MLBackendConfig, SegxalMLModel
from clients.labeling import LabelingConfig, LabelingSession, work
from clients.simulated_human import GroundTruth, SimulatedHuman, SimulatedHumanConfig
from segxal import imageio
from segxal.data.cityscapes import list_frames, load_train_ids
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE, LABEL_MAP_FILE, class_colors, load_label_map
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.coordinator.client import CoordinatorClient, cityscapes_source, image_folder_source
from tests.coordinator_support import coordinator_config, running_coordinator, write_frames
from tests.labeling_support import json_call

# Four classes, one of them (sky) a Cityscapes name: it keeps the Cityscapes colour.
LABEL_MAP = {"flat": ["road", "sidewalk"], "vehicle": ["car", "truck", "bus"], "human": ["person", "rider"],
             "sky": ["sky"]}
FOUR = tuple(LABEL_MAP)


def test_four_classes_get_their_own_labels_and_distinct_colours_cityscapes_names_keep_theirs():
    xml = lsp.label_config(FOUR)
    lsp.check_label_config_xml(xml, FOUR)
    colours = [lsp.class_colour_hex(i, FOUR) for i in range(4)]
    for name, colour in zip(FOUR, colours):
        assert f'<Label value="{name}" background="{colour}"/>' in xml
    assert len(set(colours)) == 4 and colours[3] == "#4682b4"  # Cityscapes' sky
    assert lsp.class_colour_hex(13) == "#00008e"  # the default stays Cityscapes (car)
    many = class_colors([f"class {i}" for i in range(255)])
    assert len({tuple(c) for c in many}) == 255  # distinct for the largest class list
    np.testing.assert_array_equal(class_colors([f"class {i}" for i in range(255)]), many)  # deterministic
    with pytest.raises(InvalidInput, match=r"labels \['flat', 'vehicle', 'human'\] are not among them"):
        lsp.check_label_config_xml(xml)  # a four-class project for a Cityscapes pool
    with pytest.raises(InvalidInput, match=r"classes \['road', .*'bicycle'\] have no label"):
        lsp.check_label_config_xml(lsp.label_config(("sky", "flat")), CLASS_NAMES)


def test_pre_annotations_of_four_classes_read_back_as_the_same_class_ids():
    h, w = 12, 20
    predicted = np.zeros((h, w), np.uint8)  # [H, W] class ids of FOUR
    predicted[:, 5:10], predicted[:, 10:15], predicted[:, 15:] = 1, 2, 3
    task = pb.Task(task_id="t", height=h, width=w)  # no regions: the prediction over the whole frame
    results = lsp.prediction_results(task, predicted, FOUR)
    assert sorted(r["value"]["brushlabels"][0] for r in results) == sorted(FOUR)
    np.testing.assert_array_equal(lsp.annotation_to_train_ids(results, h, w, classes=FOUR), predicted)
    with pytest.raises(InvalidInput, match=r"unknown label 'flat'; the project's labels are the 19 classes"):
        lsp.annotation_to_train_ids(results, h, w)  # read as Cityscapes: refused, not misread


@pytest.fixture
def coordinator(tmp_path):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'coordinator.db'}", tmp_path / "storage", default_lease_s=30)
    with running_coordinator(cfg) as (server, client):
        yield server, client




def test_ml_backend_takes_the_pools_classes_for_setup_and_annotations(coordinator, tmp_path):
    server, client = coordinator
    root = tmp_path / "ls-root"  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    (frame,) = write_frames(root / "frames", 1, h=16, w=24)
    pool = client.create_pool("four", class_names=FOUR)
    client.ingest(pool.pool_id, [image_folder_source(str(root / "frames"))])
    client.rank_cycle(client.start_cycle(pool.pool_id, 1, selection="random").cycle_id)
    cfg = MLBackendConfig(port=0, forward="coordinator", coordinator=server.target, pool="four",
                          ls_document_root=str(root), insecure_no_auth=True)
    with CoordinatorClient(server.target, client_id="ml-backend") as coord, \
            MLBackendServer(cfg, model=SegxalMLModel(cfg, eem=None, coordinator=coord)) as backend:
        assert json_call(backend.url, "/setup", {"project": "1.2", "schema": lsp.label_config(FOUR)})[0] == 200
        status, reply = json_call(backend.url, "/setup", {"project": "1.2", "schema": lsp.label_config()})
        assert status == 400 and "its labels must be the 4 classes being labelled (flat, vehicle, human, sky)" \
            in reply["error"]
        top = np.zeros((16, 24), bool)
        top[:8] = True
        result = [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": 24,
                   "original_height": 16, "value": {"format": "rle", "rle": brush.encode_mask(m), "brushlabels": [n]}}
                  for m, n in ((top, "vehicle"), (~top, "sky"))]
        task = {"id": 7, "data": {"image": f"/data/local-files/?d=frames/{frame.name}"}}
        status, reply = json_call(backend.url, "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                                        "annotation": {"id": 3, "result": result}, "task": task})
        assert status == 201, reply
    (ann,) = client.annotations(pool.pool_id)
    np.testing.assert_array_equal(imageio.read_label(ann.mask_uri), np.where(top, 1, 3))  # vehicle, sky


def test_simulated_human_mistakes_stay_inside_the_pools_four_classes(coordinator, tiny_dataset, tmp_path):
    import shutil
    server, client = coordinator
    data = tmp_path / "data"  # the tiny dataset with a four-class label map: ground truth in those classes
    shutil.copytree(tiny_dataset / "leftImg8bit" / "val", data / "leftImg8bit" / "val")
    shutil.copytree(tiny_dataset / "gtFine" / "val", data / "gtFine" / "val")
    (data / LABEL_MAP_FILE).write_text(json.dumps(LABEL_MAP))
    names = load_label_map(data / LABEL_MAP_FILE).names
    pool = client.create_pool("sloppy-four", class_names=names)
    client.ingest(pool.pool_id, [cityscapes_source(str(data), "val")])
    tasks = client.rank_cycle(client.start_cycle(pool.pool_id, 3, selection="random", random_seed=2).cycle_id).tasks
    cfg = SimulatedHumanConfig(labeling=LabelingConfig(coordinator=server.target, pool="sloppy-four"),
                               dataset=str(data), scope="frame", wrong_label_rate=1.0, seed=4)
    with LabelingSession(cfg.labeling) as session:
        assert session.class_names == FOUR
        summary = work(session, SimulatedHuman(cfg, GroundTruth(cfg.dataset)))
    assert summary.submitted == 3, summary.errors
    frames = {f.image.name: f for f in list_frames(data, "val")}
    by_task = {a.task_id: a for a in client.annotations(pool.pool_id)}
    for task in tasks:
        gt = load_train_ids(frames[task.frame_uri.rsplit("/", 1)[1]], (task.height, task.width))  # [H, W]
        stored = imageio.read_label(by_task[task.task_id].mask_uri)
        labeled = gt != IGNORE
        assert labeled.any() and (stored[~labeled] == IGNORE).all()
        assert (stored[labeled] < 4).all()  # never a Cityscapes trainId beyond the pool's classes
        assert (stored[labeled] != gt[labeled]).all()  # rate 1: every labeled pixel another class
        assert len(np.unique(stored[labeled])) > 1  # drawn over the others, not one fixed class
