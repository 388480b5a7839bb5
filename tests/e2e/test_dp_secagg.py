"""Differential privacy under secure aggregation, end to end on Flower's Simulation Engine.

Each DP unit runs through the real ServerApp and ClientApp with ``secagg.enabled``:
the rounds complete with every device in the secure sum, the privacy spent is
reported with its unit, and (user-level, distributed noise) the model moves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fedrec.simulations.runner import simulate

from fedrec.runconfig import RunConfig
from fedrec.store.checkpoint import load_checkpoint

SMALL = {"synthetic.n-users": 16, "synthetic.n-items": 30, "synthetic.mean-interactions": 12, "model.dim": 4,
         "rounds": 2, "eval-every": 2, "secagg.enabled": True, "secagg.timeout": 120.0}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_user_level_dp_under_secure_aggregation(tmp_path: Path, noise: str) -> None:
    # Distributed noise is calibrated to an absolute SecAgg threshold: no sum of fewer is ever revealed.
    threshold = {"secagg.threshold": 8, "secagg.neighbours": "all"} if noise == "distributed" else {}
    cfg = RunConfig.from_flat({**SMALL, **threshold, "dp.unit": "user", "dp.noise": noise, "dp.epsilon": 50.0,
                               "dp.delta": 1e-3, "dp.clip": 0.5, "dp.cohort-rate": 1.0})
    result = simulate(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["survivors"] == r["sampled"] > 0 for r in rows)
    eps = [r["epsilon"] for r in rows]
    assert 0 < eps[0] < eps[1] <= 50.0
    assert result.final["dp_unit"] == "user" and math.isfinite(result.final["rmse"])
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert np.all(np.isfinite(state.glob.item_factors))


def test_rating_level_dp_under_secure_aggregation(tmp_path: Path) -> None:
    cfg = RunConfig.from_flat({**SMALL, "dp.unit": "rating", "dp.epsilon": 8.0, "dp.delta": 1e-5,
                               "dp.batch-size": 4, "dp.local-epochs": 1})
    result = simulate(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert all(r["survivors"] == r["sampled"] == 16 for r in rows)
    spent = rows[-1]["epsilon"]
    assert 0 < spent <= 8.0
    assert result.final["dp_unit"] == "rating" and math.isfinite(result.final["rmse"])
