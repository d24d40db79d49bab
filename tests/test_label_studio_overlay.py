"""What the labeler sees, by construction: the EEM heat map blended over the frame (the frame
unchanged where EEM = 0, the colour map's top where EEM = 1 at full weight), region outlines, the
legend's gradient from the same colour map, and the label config the bridge and the ML backend
share (checked as XML, as the ML backend's /setup receives it)."""
from __future__ import annotations

import numpy as np
import pytest

from clients.label_studio import project as lsp
from clients.label_studio.overlay import INFERNO, eem_overlay, legend_css_gradient, outline_mask
from segxal.errors import InvalidInput


def test_overlay_is_the_frame_where_sure_and_the_colour_map_where_unsure():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    eem = np.zeros((40, 60), np.float32)
    eem[:, 30:] = 1.0
    out = eem_overlay(frame, eem, max_alpha=1.0)
    np.testing.assert_array_equal(out[:, :30], frame[:, :30])  # sure: the plain frame
    np.testing.assert_array_equal(out[:, 30:], np.broadcast_to(INFERNO[-1].astype(np.uint8), (40, 30, 3)))
    half = eem_overlay(frame, np.full((40, 60), 0.5, np.float32), max_alpha=0.5)
    mid = INFERNO[2]  # the colour map at 0.5
    expected = np.rint(0.75 * frame.astype(np.float32) + 0.25 * mid).astype(np.uint8)
    np.testing.assert_array_equal(half, expected)


def test_regions_are_outlined_white_over_a_dark_edge():
    frame = np.full((30, 40, 3), 128, np.uint8)
    region = np.zeros((30, 40), bool)
    region[10:20, 10:30] = True
    out = eem_overlay(frame, np.zeros((30, 40)), [region])
    assert (out[10, 10:30] == 255).all() and (out[19, 10:30] == 255).all()  # outermost ring: white
    assert (out[11, 11:29] == 0).all()  # the next ring in: dark
    np.testing.assert_array_equal(out[13:17, 13:27], frame[13:17, 13:27])  # inside: the frame
    np.testing.assert_array_equal(out[~region], frame[~region])  # outside: the frame
    assert outline_mask([region], region.shape, width=1).sum() == 2 * 20 + 2 * 8


def test_legend_gradient_uses_the_colour_map_anchors():
    css = legend_css_gradient()
    assert css.startswith("linear-gradient(to right, #000004 0%") and css.endswith("#fcffa4 100%)")
    assert "background: linear-gradient" in lsp.label_config()


def test_label_config_as_xml_is_accepted_and_others_are_refused():
    lsp.check_label_config_xml(lsp.label_config())
    with pytest.raises(InvalidInput, match="not valid XML"):
        lsp.check_label_config_xml("<View><Image")
    with pytest.raises(InvalidInput, match="expected a BrushLabels control named 'label'"):
        lsp.check_label_config_xml('<View><Image name="image" value="$image"/>'
                                   '<RectangleLabels name="label" toName="image"><Label value="car"/></RectangleLabels></View>')
    with pytest.raises(InvalidInput, match=r"labels \['unicorn'\] are not among them"):
        lsp.check_label_config_xml('<View><Image name="image" value="$image"/>'
                                   '<BrushLabels name="label" toName="image"><Label value="unicorn"/></BrushLabels></View>')
