"""`--config FILE` for `segxal loop` and `segxal al run`: one TOML file of flags, flags win."""
import pytest

from app import cli
from segxal.config_file import apply_config_file
from app.al_run import config_from_args
from segxal.errors import InvalidInput, NotFound


def _parse(argv: list[str]):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    if args.config:
        apply_config_file(args._parser, args.config)
        args = parser.parse_args(argv)
    return args


def test_file_values_become_defaults_and_flags_win(tmp_path):
    f = tmp_path / "loop.toml"
    f.write_text('data = "data/x"\nout = "runs/x"\ncycles = 6\nbudget = 96\nalpha = 0.3\nbeta = 0.7\n'
                 'db = "postgresql://u@127.0.0.1:5432/test"\nstrategy = "eem-topq"\nsize = "64x128"\n'
                 'no-progress = true\nls_wait = 60\n')
    args = _parse(["loop", "--config", str(f), "--cycles", "3", "--alpha", "0.5", "--beta", "0.5"])
    cfg = config_from_args(args)
    assert (cfg.cycles, cfg.budget, cfg.eem.alpha, cfg.eem.beta) == (3, 96, 0.5, 0.5)
    assert cfg.size == (64, 128) and cfg.strategy == "eem-topq" and cfg.progress is False
    assert args.db == "postgresql://u@127.0.0.1:5432/test" and args.ls_wait == 60.0
    # the same file drives the in-process loop, except for the services-only keys
    f.write_text('data = "data/x"\nout = "runs/x"\ncycles = 6\n')
    assert config_from_args(_parse(["al", "run", "--config", str(f)])).cycles == 6


@pytest.mark.parametrize("text, message", [
    ("cycle = 3\n", "unknown key 'cycle'"),
    ("cycles = 'many'\n", "cycles = 'many'"),
    ("oracle = 'crowd'\n", "choose from"),
    ("no_progress = 'yes'\n", "must be true or false"),
    ("cycles = [1, 2]\n", "single value"),
    ("cycles = \n", "not valid TOML"),
])
def test_bad_files_are_named_clearly(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        _parse(["loop", "--config", str(f), "--data", "d", "--out", "o"])


def test_missing_file_and_missing_required_values(tmp_path, capsys):
    with pytest.raises(NotFound, match="no such file"):
        _parse(["al", "run", "--config", str(tmp_path / "nope.toml")])
    f = tmp_path / "partial.toml"
    f.write_text('out = "runs/x"\n')
    with pytest.raises(InvalidInput, match="--data is required"):
        config_from_args(_parse(["al", "run", "--config", str(f)]))
    assert cli.main(["loop", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: label-studio is not an in-process oracle
        cli.main(["al", "run", "--oracle", "label-studio", "--data", "d", "--out", "o"])
    assert "invalid choice: 'label-studio'" in capsys.readouterr().err
