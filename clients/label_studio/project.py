"""What the bridge and the ML backend show in Label Studio and read back: the project's label config
(BrushLabels with the pool's classes in their colours, painted on the frame with the EEM heat map
blended over it and the regions to fix outlined, a legend, and the plain frame one click away),
pre-annotations, and a person's brush annotation as class ids.

Classes: every function takes the class list in use (index = class id; the coordinator pool's,
`Pool.class_names`, which is the segmentation model's), the 19 Cityscapes trainIds by default. A
label is a class name; colours are segxal.labels.class_colors (Cityscapes colours for Cityscapes
names, a fixed distinct palette otherwise).

Task data: `image` is the plain frame, `overlay` the frame with the heat map (clients.label_studio.
overlay). The brush paints on the overlay; it has the frame's size, so a brush mask is a frame mask.

Pre-annotations: each EEM region to fix becomes brush regions labeled with the model's prediction
inside it (one per predicted class; the region's dominant class when the prediction is not
readable). A task without regions (a random cycle) gets the prediction over the whole frame, when
there is one. A person corrects these and submits.

Reading an annotation back: every result must be a `brushlabels` result of the `label` control with
exactly one of the class names; a pixel is painted where the region's alpha is >= the threshold
(the frontend's strokes are antialiased at their edges), and where brush regions overlap the later
one wins (it is drawn on top). Anything else is refused with InvalidInput naming the result.
"""
from __future__ import annotations

from typing import Sequence
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

import numpy as np

from clients.label_studio import brush
from clients.label_studio.overlay import legend_css_gradient
from clients.labeling import region_masks
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE, class_colors
from segxalpb.coordinator.v1 import coordinator_pb2 as pb

FROM_NAME = "label"  # the BrushLabels control
TO_NAME = "image"  # the Image control painted on: shows the overlay
FRAME_KEY = "image"  # task data: the plain frame
OVERLAY_KEY = "overlay"  # task data: the frame with the EEM heat map blended over it
PLAIN_NAME = "plain"  # the Image control of the plain frame (in a collapsed panel)
TASK_KEY = "segxal_task_id"  # task data field linking a Label Studio task to its coordinator task
WHY_KEY = "segxal_why"  # task data field: why the cycle's selection picked the frame (bridge tasks)
DEFAULT_ALPHA_THRESHOLD = 128


def class_colour_hex(class_id: int, classes: Sequence[str] = CLASS_NAMES) -> str:
    """The colour a class is painted in, as Label Studio's `background` (#rrggbb)."""
    r, g, b = (int(v) for v in class_colors(classes)[class_id])
    return f"#{r:02x}{g:02x}{b:02x}"


def label_config(classes: Sequence[str] = CLASS_NAMES, with_reasons: bool = False) -> str:
    """The project's labeling interface: the frame with the EEM heat map over it (BrushLabels of
    `classes` paint on it), a legend, and the plain frame in a collapsed panel (one click away).
    with_reasons: a line under the title saying why the frame was picked (task data WHY_KEY; the
    bridge's tasks carry it, frames imported for the ML backend do not)."""
    why = f'\n  <Header value="${WHY_KEY}" size="6"/>' if with_reasons else ""
    labels = "\n".join(f"    <Label value={quoteattr(name)} background={quoteattr(class_colour_hex(i, classes))}/>"
                       for i, name in enumerate(classes))
    legend = quoteattr(f"width: 240px; height: 12px; border: 1px solid #888; background: {legend_css_gradient()}")
    return f"""<View>
  <Header value="Fix the outlined regions: the heat map shows where the model is unsure (EEM)"/>{why}
  <View style="display: flex; align-items: center; gap: 8px">
    <Header value="EEM heat map: sure" size="6"/>
    <View style={legend}/>
    <Header value="unsure" size="6"/>
  </View>
  <Image name="{TO_NAME}" value="${OVERLAY_KEY}" zoom="true" zoomControl="true"/>
  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">
{labels}
  </BrushLabels>
  <Collapse>
    <Panel value="Plain frame (without the heat map)">
      <Image name="{PLAIN_NAME}" value="${FRAME_KEY}"/>
    </Panel>
  </Collapse>
</View>"""


def _check_labels(labels: Sequence[str], classes: Sequence[str], where: str) -> None:
    """The project's labels must be the classes: a label that is no class cannot be read back, and
    a class without a label cannot be painted."""
    unknown = [n for n in labels if n not in classes]
    missing = [n for n in classes if n not in labels]
    problems = ([f"labels {unknown} are not among them"] if unknown else []) + \
        ([f"classes {missing} have no label"] if missing else [])
    if problems:
        raise InvalidInput(f"{where}: its labels must be the {len(classes)} classes being labelled "
                           f"({', '.join(classes)}); {'; '.join(problems)}")


def check_label_config(parsed: dict, classes: Sequence[str] = CLASS_NAMES) -> None:
    """Refuse a project whose labeling interface the bridge cannot read.

    Args:
        parsed: the project's `parsed_label_config`.
        classes: the classes being labelled (index = class id).

    Raises:
        InvalidInput: no BrushLabels control named "label" on the image "image", or its labels are
            not `classes` (the message names the difference).
    """
    control = parsed.get(FROM_NAME) or {}
    if control.get("type") != "BrushLabels" or TO_NAME not in (control.get("to_name") or []):
        raise InvalidInput(f"Label Studio project: expected a BrushLabels control named {FROM_NAME!r} on an "
                           f"Image named {TO_NAME!r} (the bridge's label config), found {sorted(parsed)}")
    _check_labels(control.get("labels") or [], classes, "Label Studio project")


def check_label_config_xml(schema: str, classes: Sequence[str] = CLASS_NAMES) -> None:
    """check_label_config for a label config as XML text (what /setup receives).

    Raises:
        InvalidInput: not XML, no BrushLabels control named "label" on an Image named "image", or
            labels that are not `classes` (named).
    """
    try:
        root = ElementTree.fromstring(schema)
    except ElementTree.ParseError as e:
        raise InvalidInput(f"label config is not valid XML ({e})") from None
    images = {el.get("name") for el in root.iter("Image")}
    for control in root.iter("BrushLabels"):
        if control.get("name") == FROM_NAME and TO_NAME in (control.get("toName") or "").split(",") \
                and TO_NAME in images:
            _check_labels([el.get("value") for el in control.iter("Label")], classes, "label config")
            return
    raise InvalidInput(f"label config: expected a BrushLabels control named {FROM_NAME!r} on an Image named "
                       f"{TO_NAME!r} (clients.label_studio.project.label_config())")


def _brush_result(result_id: str, mask: np.ndarray, class_name: str) -> dict:
    height, width = mask.shape
    return {"id": result_id, "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
            "original_width": int(width), "original_height": int(height), "image_rotation": 0,
            "value": {"format": "rle", "rle": brush.encode_mask(mask), "brushlabels": [class_name]}}


def region_pre_annotation(regions: list[tuple[int, np.ndarray, int]], predicted: np.ndarray | None,
                          classes: Sequence[str] = CLASS_NAMES) -> list[dict]:
    """Brush pre-annotations restricted to the regions to fix.

    Args:
        regions: (region id, bool mask [H, W], dominant predicted class id) per region.
        predicted: the model's class ids [H, W], or None when unknown.
        classes: the class names, index = class id (ids beyond them are not shown).

    Returns:
        per region, one brush result per predicted class inside it (or the region's dominant class
        when there is no prediction).
    """
    results = []
    for region_id, mask, dominant in regions:
        if predicted is None:
            if dominant < len(classes):
                results.append(_brush_result(f"r{region_id}", mask, classes[dominant]))
            continue
        for c in np.unique(predicted[mask]):
            if c < len(classes):
                results.append(_brush_result(f"r{region_id}c{c}", mask & (predicted == c), classes[c]))
    return results


def prediction_results(task: pb.Task, predicted: np.ndarray | None, classes: Sequence[str] = CLASS_NAMES) -> list[dict]:
    """Pre-annotations of a coordinator task as brush results.

    Args:
        task: the coordinator task (its regions, size).
        predicted: the model's class ids [H, W] for the frame, or None when unknown.
        classes: the pool's class names, index = class id.

    Returns:
        brush results: per region, one per predicted class inside it (or the region's dominant class);
        without regions, one per predicted class over the frame; [] when there is nothing to show.
    """
    if task.regions:
        return region_pre_annotation([(r.region_id, m, r.dominant_train_id)
                                      for r, m in zip(task.regions, region_masks(task))], predicted, classes)
    if predicted is None:
        return []
    return [_brush_result(f"c{c}", predicted == c, classes[c]) for c in np.unique(predicted) if c < len(classes)]


def annotation_to_train_ids(result: list[dict], height: int, width: int,
                            alpha_threshold: int = DEFAULT_ALPHA_THRESHOLD,
                            classes: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """A Label Studio annotation's result as class ids (trainIds for Cityscapes).

    Args:
        result: the annotation's `result` list.
        height, width: the frame's size.
        alpha_threshold: a pixel is painted where the brush alpha is >= this (1..255).
        classes: the class names, index = class id: a label is read as its index here.

    Returns:
        class ids uint8 [H, W], 255 where nothing was painted.

    Raises:
        InvalidInput: a result that is not a brush region of the "label" control, an unknown or
            missing label, a region of another size, a bad RLE, or nothing painted at all.
    """
    ids = {name: i for i, name in enumerate(classes)}
    out = np.full((height, width), IGNORE, dtype=np.uint8)  # [H, W]
    for i, r in enumerate(result):
        if not isinstance(r, dict):
            raise InvalidInput(f"result {i}: must be an object, got {type(r).__name__}")
        where = f"result {i} ({r.get('id', 'no id')})"
        if r.get("type") != "brushlabels" or r.get("from_name") != FROM_NAME:
            raise InvalidInput(f"{where}: a {r.get('type')!r} result of {r.get('from_name')!r}; the bridge reads "
                               f"only brushlabels results of {FROM_NAME!r}")
        value = r.get("value") or {}
        names = value.get("brushlabels") if isinstance(value, dict) else None
        if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
            raise InvalidInput(f"{where}: a brush region needs exactly one label, got {names}")
        name = names[0]
        if name not in ids:
            raise InvalidInput(f"{where}: unknown label {name!r}; the project's labels are the "
                               f"{len(classes)} classes being labelled ({', '.join(classes)})")
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise InvalidInput(f"{where}: brush region without an RLE (format {value.get('format')!r})")
        size = (r.get("original_height"), r.get("original_width"))
        if size != (height, width):
            raise InvalidInput(f"{where}: drawn on a {size[0]} x {size[1]} image, the frame is {height} x {width}")
        painted = brush.decode_alpha(value["rle"], height, width) >= alpha_threshold  # [H, W]
        out[painted] = ids[name]
    if not (out != IGNORE).any():
        raise InvalidInput("empty annotation: no pixel is painted with a class")
    return out


def regions_touched(task: pb.Task, labels: np.ndarray) -> tuple[int, ...]:
    """Ids of the task's regions where the annotation labels at least one pixel."""
    annotated = labels != IGNORE
    return tuple(r.region_id for r, m in zip(task.regions, region_masks(task)) if (annotated & m).any())


def region_eem_map(task: pb.Task) -> np.ndarray:
    """An EEM map from the task alone: each region filled with its mean EEM, 0 elsewhere (used when
    no EEM service is configured). float32 [H, W]."""
    out = np.zeros((task.height, task.width), dtype=np.float32)
    for region, mask in zip(task.regions, region_masks(task)):
        out[mask] = region.mean_eem
    return out
