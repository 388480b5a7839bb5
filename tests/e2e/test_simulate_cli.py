"""What README promises of the ``fedrec`` command: the dispatcher, ``--json``, ``--config``, ``--resume``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec.cli import SUBCOMMANDS, main
from fedrec.store.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "synthetic.n-users=10", "--set", "synthetic.n-items=20", "--set", "synthetic.mean-interactions=8",
         "--set", "model.dim=4", "--set", "eval-every=1"]


def test_dispatcher_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


def test_dispatcher_refuses_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulte"]) == 2
    assert "unknown command 'simulte'" in capsys.readouterr().err


def test_dispatcher_version(capsys: pytest.CaptureFixture[str]) -> None:
    from fedrec import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == __version__


def _simulate(args: list[str], *, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "fedrec.cli", "simulate", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object on stdout
    out: dict[str, object] = json.loads(lines[0])
    return out


@pytest.mark.slow  # two `fedrec simulate` processes on Flower (about a minute on 2 idle cores)
def test_simulate_json_then_resume_from_the_run_folder_config(tmp_path: Path) -> None:
    """``--json`` prints one object; ``--config <run>/config.toml --resume`` continues that run.

    Runs with ``FEDREC_LINKSTATE_INDEX=0`` (Flower's own LinkState, unpatched), so that path is covered too.
    """
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDREC_LINKSTATE_INDEX": "0"}
    first = _simulate([*SMALL, "--rounds", "2", "--run-dir", str(run)], env=env)
    assert first["rounds"] == 2 and isinstance(first["rmse"], float) and first["run_dir"] == str(run)
    state, _ = load_checkpoint(run / "checkpoint.npz")
    assert state.round == 2

    second = _simulate(["--config", str(run / "config.toml"), "--rounds", "3", "--run-dir", str(run), "--resume"],
                       env=env)
    assert second["rounds"] == 1  # only round 3 ran
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    resumed, _ = load_checkpoint(run / "checkpoint.npz")
    assert resumed.round == 3 and resumed.glob.n_items == state.glob.n_items
