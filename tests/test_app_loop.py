"""The app layer's pieces of the main job that need no full run: waiting for a hot reload, the
terminal (bars, logs in a file)."""
from __future__ import annotations

import logging
import pytest

from app.loop import wait_until_version_served
from app.terminal import logs_in_file
from segxal.errors import NotReady
from tests.inference_support import export_models, make_repository, running_server
from tests.net_support import free_port


def test_an_unreachable_server_fails_the_wait_at_once_and_says_so():
    """A wrong address or TLS set-up is an error at once, not 'not served after 120 s' (the wait
    used to swallow every error)."""
    with pytest.raises(NotReady, match="cannot be reached"):
        wait_until_version_served(f"127.0.0.1:{free_port()}", 1, timeout_s=5)


def test_waits_for_the_version_and_times_out_on_a_missing_one(tmp_path):
    repo = make_repository(tmp_path / "repo", export_models(tmp_path / "export", seeds=(0,)))
    with running_server(repo) as server:
        wait_until_version_served(server.target, 1, timeout_s=30)  # served: returns
        with pytest.raises(NotReady, match="version 7 not served after 1 s"):
            wait_until_version_served(server.target, 7, timeout_s=1, poll_s=0.2)


def test_logs_go_to_the_file_and_only_warnings_to_the_terminal(tmp_path, capsys):
    root = logging.getLogger()
    console = logging.StreamHandler()  # what app.cli's basicConfig installs
    console.setLevel(logging.INFO)
    old_level = root.level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        with logs_in_file(tmp_path / "loop.log") as path:
            logging.getLogger("clients.labeling").info("task t1 submitted")
            logging.getLogger("app.loop").warning("publish refused")
        logging.getLogger("after").info("back on the terminal")
    finally:
        root.removeHandler(console)
        root.setLevel(old_level)
    text = path.read_text()
    assert "task t1 submitted" in text and "publish refused" in text and "back on the terminal" not in text
    err = capsys.readouterr().err
    assert "task t1 submitted" not in err and "publish refused" in err and "back on the terminal" in err
