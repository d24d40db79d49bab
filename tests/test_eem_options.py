"""The EEM options on their way from a flag to the maths: one home (segxal.eem.options), one rule for a
weight given alone, one validate, one wire form with presence, no silent defaults."""
import numpy as np
import pytest

from app import cli
from segxal.eem.options import EEMOptions
from segxal.eem.regions import extract_regions
from segxal.errors import InvalidInput
from segxalpb.eem.v1 import eem_pb2 as pb
from services.eem.api import ScoreOptions
from services.eem.wire import eem_options_from_proto, eem_options_to_proto, options_from_proto, options_to_proto


def test_min_region_area_zero_and_fixed_threshold_zero_survive_the_wire():
    opts = EEMOptions(min_region_area=0, threshold_mode="fixed", threshold=0.0, q=0.3)
    back = options_from_proto(options_to_proto(ScoreOptions(eem=opts))).eem
    assert back == opts  # 0 stays 0 (it keeps every region), a fixed threshold of 0 stays 0
    assert eem_options_from_proto(pb.EemOptions()) == EEMOptions()  # unset: the defaults


def test_extract_regions_and_options_share_one_min_area_default():
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
def test_options_to_proto_refuses_unknown_mode_or_map_kind(opts, needle):
    with pytest.raises(InvalidInput, match=needle):
        options_to_proto(opts)


def test_eem_options_to_proto_sets_every_field():
    msg = eem_options_to_proto(EEMOptions())
    for name in ("alpha", "beta", "top_q", "threshold", "min_region_area"):  # fields with presence
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


def test_loop_refuses_fixed_threshold_above_one_before_writing_anything(tmp_path, capsys):
    """`segxal loop` refused a fixed threshold > 1 only after the seed model had trained; now the
    command fails at once, before it writes anything."""
    out = tmp_path / "out"
    rc = cli.main(["loop", "--data", str(tmp_path / "data"), "--out", str(out),
                   "--threshold-mode", "fixed", "--threshold", "1.5"])
    assert rc == 2 and "threshold" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, want", [
    (["--alpha", "0.3"], (0.3, 0.7)),
    (["--beta", "0.2"], (0.8, 0.2)),
    ([], (0.5, 0.5)),
    (["--alpha", "0.25", "--beta", "0.75"], (0.25, 0.75)),
])
def test_loop_weight_given_alone_reaches_the_maths_with_the_other_one_minus_it(tmp_path, argv, want):
    """`segxal loop --alpha 0.3` means beta = 0.7, through the flags, the wire the coordinator
    stores and sends, and the fused map itself."""
    from app.al_run import config_from_args
    from segxal.eem.frame import score_frame
    args = cli.build_parser().parse_args(["loop", "--data", "d", "--out", "o"] + argv)
    eem = config_from_args(args).eem
    assert (eem.alpha, eem.beta) == pytest.approx(want)
    wired = eem_options_from_proto(eem_options_to_proto(eem))  # the cycle's options, as stored and sent
    rng = np.random.default_rng(0)
    ebu, cam = rng.random((2, 16, 32), dtype=np.float32)
    labels = np.zeros((16, 32), np.uint8)
    inv_depth = np.linspace(1, 2, 16 * 32, dtype=np.float32).reshape(16, 32)
    f = score_frame(labels, ebu, cam, inv_depth, wired.validate(), with_regions=False)
    assert wired.fusion == "multiplicative"  # the default: EEM = EBU (alpha + beta PAE)
    np.testing.assert_allclose(f.eem, f.ebu * (want[0] + want[1] * f.pae), atol=1e-6)


def test_every_entry_point_applies_the_one_weight_rule():
    """The in-process loop, the services loop, the fleet worker, the Label Studio backend, the TOML
    file and the wire: a weight given alone makes the other 1 - it."""
    from app.al_run import config_from_args
    from clients.label_studio import ml_backend
    from services.fleet import worker
    assert config_from_args(cli.build_parser().parse_args(
        ["al", "run", "--data", "d", "--out", "o", "--beta", "0.1"])).eem.alpha == pytest.approx(0.9)
    w = worker.config_from_args(worker.build_parser().parse_args(
        ["--index", "0", "--count", "1", "--logs", "x.mcap", "--coordinator", "c:1", "--eem", "e:1",
         "--results", "r", "--alpha", "0.3"]))
    assert (w.eem.alpha, w.eem.beta) == pytest.approx((0.3, 0.7))
    b = ml_backend.config_from_args(ml_backend.build_parser().parse_args(["--eem-beta", "0.4"]))
    assert (b.eem.alpha, b.eem.beta) == pytest.approx((0.6, 0.4))
    msg = pb.EemOptions(beta=0.25)
    assert (eem_options_from_proto(msg).alpha, eem_options_from_proto(msg).beta) == (0.75, 0.25)


def test_toml_weight_given_alone(tmp_path):
    from app.al_run import config_from_args
    from segxal.config_file import apply_config_file
    f = tmp_path / "loop.toml"
    f.write_text('data = "d"\nout = "o"\nalpha = 0.3\n')
    parser = cli.build_parser()
    args = parser.parse_args(["loop", "--config", str(f)])
    apply_config_file(args._parser, args.config)
    eem = config_from_args(parser.parse_args(["loop", "--config", str(f)])).eem
    assert (eem.alpha, eem.beta) == pytest.approx((0.3, 0.7))


def test_both_weights_given_must_sum_to_one_and_the_error_names_the_rule(capsys):
    assert cli.main(["loop", "--data", "d", "--out", "o", "--alpha", "0.3", "--beta", "0.5"]) == 2
    assert "give one alone and the other is 1 - it" in capsys.readouterr().err


def test_multiplicative_fusion_keeps_confident_pixels_low():
    """EBU (alpha + beta PAE): a pixel the model is sure of (EBU 0) stays 0 whatever its PAE; the
    additive fusion would give it beta * PAE."""
    from segxal.eem.fuse import eem
    ebu = np.array([[0.0, 0.5]], np.float32)
    pae = np.array([[1.0, 0.0]], np.float32)
    np.testing.assert_allclose(eem(ebu, pae, 0.5, 0.5, fusion="multiplicative"), [[0.0, 0.25]])
    np.testing.assert_allclose(eem(ebu, pae, 0.5, 0.5, fusion="additive"), [[0.5, 0.25]])
    with pytest.raises(InvalidInput, match="fusion"):
        EEMOptions(fusion="max").validate()
    assert eem_options_from_proto(eem_options_to_proto(EEMOptions(fusion="multiplicative"))).fusion == "multiplicative"


def test_cycle_stored_before_fusion_existed_reads_as_additive():
    assert EEMOptions.from_dict({"alpha": 0.5, "beta": 0.5}).fusion == "additive"
    with pytest.raises(InvalidInput, match="unknown EEM option"):
        EEMOptions.from_dict({"alpha": 0.5, "gamma": 1})
