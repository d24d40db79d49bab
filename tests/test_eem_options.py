"""The EEM options on their way from a flag to the maths: one validate, one wire form with presence,
no silent defaults. Each regression test is named after the bug it pins."""
import numpy as np
import pytest

from app import cli
from segxal.al.scoring import EEMOptions
from segxal.eem.regions import extract_regions
from segxal.errors import InvalidInput
from segxalpb.eem.v1 import eem_pb2 as pb
from services.eem.api import ScoreOptions
from services.eem.wire import eem_options_from_proto, eem_options_to_proto, options_from_proto, options_to_proto


def test_min_region_area_zero_becoming_16_over_the_wire():
    opts = EEMOptions(min_region_area=0, threshold_mode="fixed", threshold=0.0, q=0.3)
    back = options_from_proto(options_to_proto(ScoreOptions(eem=opts))).eem
    assert back == opts  # 0 stays 0 (it keeps every region), a fixed threshold of 0 stays 0
    assert eem_options_from_proto(pb.EemOptions()) == EEMOptions()  # unset: the defaults


def test_dead_default_min_region_area_64_in_regions():
    """extract_regions' own default and EEMOptions' are one number: a caller of either gets the same
    regions (a 20-pixel component is kept by both)."""
    eem = np.zeros((32, 32), np.float32)
    eem[2:6, 2:7] = 1.0  # 20 pixels
    labels = np.zeros((32, 32), np.uint8)
    direct = extract_regions(eem, labels, threshold=0.5, mode="fixed")
    via_options = extract_regions(eem, labels, threshold=0.5, mode="fixed",
                                  min_area=EEMOptions().min_region_area)
    assert len(direct) == len(via_options) == 1


@pytest.mark.parametrize("opts, needle", [
    (ScoreOptions(eem=EEMOptions(score_mode="median")), "score mode"),
    (ScoreOptions(eem=EEMOptions(threshold_mode="triangle")), "threshold mode"),
    (ScoreOptions(maps=("eem", "heat")), "map kind"),
    (ScoreOptions(map_bits=12), "bit depth"),
])
def test_options_to_proto_silently_defaulting_unknown_mode_or_map_kind(opts, needle):
    with pytest.raises(InvalidInput, match=needle):
        options_to_proto(opts)


def test_eem_options_to_proto_sets_every_field():
    msg = eem_options_to_proto(EEMOptions())
    for name in ("alpha", "beta", "top_q", "threshold", "min_region_area"):
        assert msg.HasField(name), name


@pytest.mark.parametrize("opts, needle", [
    (EEMOptions(alpha=0.6, beta=0.6), "sum to 1"),
    (EEMOptions(alpha=1.2, beta=-0.2), "alpha"),
    (EEMOptions(alpha=0.5 + 5e-7, beta=0.5), None),  # within the one tolerance
    (EEMOptions(alpha=0.5 + 5e-6, beta=0.5), "sum to 1"),
    (EEMOptions(threshold=1.5, threshold_mode="fixed"), "threshold"),
    (EEMOptions(q=0.0), "q must"),
    (EEMOptions(min_region_area=-1), "min_region_area"),
])
def test_one_validate(opts, needle):
    if needle is None:
        assert opts.validate() is opts
    else:
        with pytest.raises(InvalidInput, match=needle):
            opts.validate()


def test_options_key_is_stable_and_tells_options_apart():
    assert EEMOptions().key() == EEMOptions().key()
    assert EEMOptions().key() != EEMOptions(min_region_area=0).key()
    assert EEMOptions().key() != EEMOptions(alpha=0.4, beta=0.6).key()


def test_fixed_threshold_above_one_accepted_at_start_up(tmp_path, capsys):
    """`segxal loop` refused a fixed threshold > 1 only after the seed model had trained; now the
    command fails at once, before it writes anything."""
    out = tmp_path / "out"
    rc = cli.main(["loop", "--data", str(tmp_path / "data"), "--out", str(out),
                   "--threshold-mode", "fixed", "--threshold", "1.5"])
    assert rc == 2 and "threshold" in capsys.readouterr().err
    assert not out.exists()
