"""kill -9 in the middle of a simulation, then ``--resume``: the run ends as if never interrupted.

Each scenario runs the real ``fedrec simulate`` three times in subprocesses:
uninterrupted, killed with SIGKILL (its whole process group, Ray workers
included) once round 2's metrics line is written, and resumed from that run
folder. The resumed run must report the same total rounds, the same epsilon,
the same final metrics and every device's persisted state (user factors,
accountants) as the uninterrupted run's: a simulation's devices draw their DP
noise from streams of the run's seed, so with the same seed the DP runs are
exact replays too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.store.device_table import DEVICE_STATE_FILE, DeviceStateTable

ROOT = Path(__file__).resolve().parents[2]
N_DEVICES = 6
ROUNDS = 4
BASE = ["--set", f"synthetic.n-users={N_DEVICES}", "--set", "synthetic.n-items=30", "--set", "model.dim=4",
        "--rounds", str(ROUNDS), "--set", "eval-every=1"]
# the public rating-level schedule: every rating in a step's batch with probability dp.rating-rate
RATING_DP = ["--set", "dp.unit=rating", "--set", "dp.epsilon=6", "--set", "dp.rating-rate=0.25",
             "--set", "strategy.server-lr=5.0"]
USER_DP = ["--set", "dp.unit=user", "--set", "dp.epsilon=20", "--set", "dp.delta=1e-3"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _command(run: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedrec.cli", "simulate", *BASE, *extra, "--run-dir", str(run), "--json"]


def _run(run: Path, extra: list[str]) -> dict[str, Any]:
    proc = subprocess.run(_command(run, extra), capture_output=True, text=True, env=_env(), cwd=run.parent,
                          timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _rounds_written(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [int(json.loads(line)["round"]) for line in path.read_text().splitlines() if line.strip()]


def _kill_after_round(run: Path, extra: list[str], k: int) -> None:
    proc = subprocess.Popen(_command(run, extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), cwd=run.parent, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(r >= k for r in _rounds_written(run)):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert max(_rounds_written(run)) < ROUNDS, "killed too late to test anything"


def _device_states(run: Path) -> dict[str, dict[str, np.ndarray]]:
    table = DeviceStateTable(run / DEVICE_STATE_FILE)
    out = {}
    for device in range(N_DEVICES):
        row = table.read(str(device))
        assert row is not None and row[0] == ROUNDS, f"device {device}: {row and row[0]}"
        out[str(device)] = row[1]
    table.close()
    return out


def _scenario(tmp_path: Path, extra: list[str]) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    expected = _run(whole, extra)
    _kill_after_round(broken, extra, 2)
    resumed = _run(broken, [*extra, "--resume"])
    assert expected["rounds"] == resumed["rounds"] == ROUNDS
    assert _rounds_written(whole) == _rounds_written(broken) == list(range(1, ROUNDS + 1))
    return expected, resumed, whole, broken


def _same_end(expected: dict[str, Any], resumed: dict[str, Any], whole: Path, broken: Path) -> None:
    """Same final metrics and epsilon; every device's persisted state equal, array by array."""
    for key in ("rmse", "mae"):
        assert resumed[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    if "epsilon" in expected:
        assert resumed["epsilon"] == pytest.approx(expected["epsilon"], rel=1e-9)
    a, b = _device_states(whole), _device_states(broken)
    for device in a:
        assert set(a[device]) == set(b[device]), device
        for key in a[device]:
            np.testing.assert_allclose(b[device][key], a[device][key], rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_plain_run_killed_and_resumed_ends_with_the_same_model(tmp_path: Path) -> None:
    _same_end(*_scenario(tmp_path, []))


@pytest.mark.slow
def test_rating_level_run_killed_and_resumed_spends_the_same_budget(tmp_path: Path) -> None:
    """Every device's accountant continues (the same steps recorded), the same epsilon, the same model."""
    expected, resumed, whole, broken = _scenario(tmp_path, RATING_DP)
    assert expected["epsilon"] > 0 and expected["dp_unit"] == "rating"
    _same_end(expected, resumed, whole, broken)
    a, b = _device_states(whole), _device_states(broken)
    for device in a:
        accountants = sorted(k for k in a[device] if k.endswith(".accountant"))
        assert accountants and accountants == sorted(k for k in b[device] if k.endswith(".accountant"))
        for key in accountants:
            assert json.loads(a[device][key].tobytes()) == json.loads(b[device][key].tobytes())


@pytest.mark.slow
def test_user_level_run_killed_and_resumed_ends_with_the_same_model(tmp_path: Path) -> None:
    """The server's accountant and noise stream are in the checkpoint: the same epsilon and the same model."""
    expected, resumed, whole, broken = _scenario(tmp_path, USER_DP)
    assert expected["epsilon"] > 0 and expected["dp_unit"] == "user"
    _same_end(expected, resumed, whole, broken)
