"""services.common.flags: every main's flags default to SEGXAL_<SERVICE>_<FLAG>, flags win, and a
bad variable is refused naming the variable (through the real coordinator and inference mains)."""
import pytest

from services.coordinator import main as coordinator_main
from services.inference import main as inference_main


def _coordinator(argv, monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(f"SEGXAL_COORDINATOR_{k}", v)
    return coordinator_main.config_from_args(coordinator_main.build_parser().parse_args(argv))


def test_environment_then_flags(monkeypatch):
    cfg = _coordinator(["--dice-threshold", "0.8"], monkeypatch, DICE_THRESHOLD="0.9", SCORING_CHUNK="3",
                       INGEST_ROOTS="/a:/b", GRACE_S="2.5", HEALTH_PORT="9000")
    assert (cfg.default_dice_threshold, cfg.ranking.chunk_size, cfg.ingest_roots) == (0.8, 3, ("/a", "/b"))
    assert (cfg.server.grace_s, cfg.server.health_address) == (2.5, "127.0.0.1:9000")
    assert _coordinator(["--ingest-root", "/x"], monkeypatch, INGEST_ROOTS="/a").ingest_roots == ("/x",)


def test_a_bad_variable_is_refused_by_name(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _coordinator([], monkeypatch, SCORING_CHUNK="three")
    assert e.value.code == 2 and "SEGXAL_COORDINATOR_SCORING_CHUNK='three'" in capsys.readouterr().err


@pytest.mark.parametrize("value, on", [("yes", True), ("1", True), ("off", False), ("0", False), ("", True)])
def test_switches_read_the_usual_spellings(monkeypatch, value, on):
    monkeypatch.setenv("SEGXAL_INFERENCE_ORT_SPINNING", value)
    assert inference_main.build_config(["--repo", "R"]).runtime.spinning is on


def test_a_switch_refuses_other_words(monkeypatch, capsys):
    monkeypatch.setenv("SEGXAL_INFERENCE_ORT_SPINNING", "maybe")
    with pytest.raises(SystemExit):
        inference_main.build_config(["--repo", "R"])
    assert "SEGXAL_INFERENCE_ORT_SPINNING" in capsys.readouterr().err


def test_a_switch_takes_its_no_form_and_a_flag_wins_over_the_variable(monkeypatch):
    import argparse

    from services.common.flags import EnvFlags
    p = argparse.ArgumentParser()
    EnvFlags(p, "T_").switch("--fast", True)
    assert p.parse_args([]).fast is True and p.parse_args(["--no-fast"]).fast is False
    monkeypatch.setenv("SEGXAL_INFERENCE_ORT_SPINNING", "on")
    assert inference_main.build_config(["--repo", "R", "--no-ort-spinning"]).runtime.spinning is False


# every entry point a person or a manifest runs: the `segxal` command, each service's main, the
# fleet worker and the labeling clients
ENTRY_POINTS = ["app.cli", "services.inference.main", "services.triton.main", "services.eem.main",
                "services.coordinator.main", "services.trainer.main", "services.fleet.worker",
                "clients.machine", "clients.simulated_human", "clients.label_studio.__main__",
                "clients.label_studio.ml_backend"]


def _flags_without_help(parser, prefix: str) -> list[str]:
    import argparse
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _flags_without_help(sub, f"{prefix} {name}")
        elif isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        elif not (action.help or "").strip():
            missing.append(f"{prefix} {action.option_strings[-1] if action.option_strings else action.dest}")
    return missing


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_flag_says_what_it_does(module):
    import importlib
    parser = importlib.import_module(module).build_parser()
    assert _flags_without_help(parser, module) == []
