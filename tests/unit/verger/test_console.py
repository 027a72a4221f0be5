"""The demo's terminal stays quiet: logs go to files, the screen gets only what it is given."""
from __future__ import annotations

import subprocess
import sys

import pytest

from verger.demo.console import HANDLER_LOG, SPARK_LOG, quiet_logs
from verger.demo.run import DEMO_MARKER, DemoError, fresh_warehouse


def test_python_output_and_child_processes_go_to_their_logs(tmp_path, capfd):
    # GIVEN the demo's console around a print, a child process writing to both streams, and a screen line
    with quiet_logs(tmp_path / "logs", verbose=False) as console:
        print('{"level": "INFO", "message": "batch submitted"}')
        subprocess.run([sys.executable, "-c", "import sys; print('spark out'); print('spark err', file=sys.stderr)"],
                       check=True)
        print("wave 1 ... done", file=console.screen)
    # THEN the terminal saw only the screen line, and each log holds its own output
    out, err = capfd.readouterr()
    assert "wave 1 ... done" in err and "batch submitted" not in out + err and "spark" not in out + err
    assert "batch submitted" in (tmp_path / "logs" / HANDLER_LOG).read_text()
    assert {"spark out", "spark err"} <= set((tmp_path / "logs" / SPARK_LOG).read_text().split("\n"))
    assert console.logs == tmp_path / "logs"


def test_streams_are_restored_after_the_block(tmp_path, capfd):
    with quiet_logs(tmp_path / "logs", verbose=False):
        pass
    print("after")
    subprocess.run([sys.executable, "-c", "print('child after')"], check=True)
    out, _ = capfd.readouterr()
    assert "after" in out and "child after" in out


def test_verbose_shows_everything_live(tmp_path):
    with quiet_logs(tmp_path / "logs", verbose=True) as console:
        assert console.logs is None and console.screen is sys.stderr
    assert not (tmp_path / "logs").exists()


def test_a_previous_demo_warehouse_is_replaced_and_any_other_refused(tmp_path):
    # GIVEN a warehouse left by a previous demo, and a folder the demo did not make
    demo = tmp_path / "demo"
    fresh_warehouse(demo)
    (demo / "catalog.db").write_text("old")
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    # WHEN the demo prepares each
    fresh_warehouse(demo)
    # THEN the demo's own is emptied, the other is left untouched with an error naming it
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER]
    with pytest.raises(DemoError, match="not made by `verger demo`"):
        fresh_warehouse(other)
    assert (other / "precious.txt").read_text() == "keep me"
