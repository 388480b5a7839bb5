"""The full-catalogue implicit model (``model.loss = "wrmf"``) through Flower's apps, against the reference loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from testkit import RecordingGrid, train_on_simulation_engine

from fedrec import wire
from fedrec.data.spec import load_run_dataset
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import ServerState
from fedrec.model.params import MISSING_WEIGHT
from fedrec.runconfig import RunConfig

N_USERS, N_ITEMS, DIM = 16, 40, 4
CFG = {"protocol": "R1", "synthetic.n-users": N_USERS, "synthetic.n-items": N_ITEMS,
       "synthetic.mean-interactions": 10, "rounds": 3, "eval-every": 1, "model.dim": DIM, "model.loss": "wrmf",
       "model.reg": 1.0, "model.confidence": 3.0, "model.pop-exponent": -0.5, "model.recency-boost": 0.0,
       "strategy.optimizer": "sgd", "strategy.server-lr": 1.0, "min-clients": N_USERS}


def _flower(cfg: RunConfig) -> tuple[RecordingGrid, list[dict[str, Any]], Any]:
    grid, result = train_on_simulation_engine(cfg, N_USERS)
    return grid, result.history, result.state


@pytest.mark.slow
def test_wrmf_through_flower_equals_the_reference_loop() -> None:
    """Plain (no secure aggregation): the apps carry p p^T, the curvature and the public missing-data weights."""
    cfg = RunConfig.from_flat(CFG)
    grid, history, state = _flower(cfg)
    ref_state, ref_history = train_in_process(load_run_dataset(cfg.data), cfg.model, cfg.fed)
    assert [r["round"] for r in history] == [1, 2, 3] and all(r["survivors"] == N_USERS for r in history)
    np.testing.assert_allclose(state.glob.item_factors, ref_state.glob.item_factors, atol=1e-4)
    assert state.glob.missing_weight is not None
    np.testing.assert_allclose(state.glob.missing_weight, ref_state.glob.missing_weight, rtol=1e-6)
    for got, want in zip(history, ref_history, strict=True):
        assert got["hr@10"] == pytest.approx(want["hr@10"], abs=1e-9)
    train = [r for r in grid.replies if r.metadata.message_type == wire.MSG_TRAIN]
    shapes = {k: v.numpy().shape for k, v in train[0].content.array_records[wire.RECORD_UPDATE].items()}
    assert shapes == {"item_factors": (N_ITEMS, DIM), "item_bias": (N_ITEMS,), "counts": (N_ITEMS,),
                      wire.ARRAY_USER_GRAM: (DIM * DIM,), wire.ARRAY_ITEM_CURVATURE: (N_ITEMS,)}
    downlinks = [m for m in grid.sent if m.metadata.message_type == wire.MSG_TRAIN]
    assert MISSING_WEIGHT not in downlinks[0].content.array_records[wire.RECORD_GLOBAL]  # round 1: uniform
    assert MISSING_WEIGHT in downlinks[-1].content.array_records[wire.RECORD_GLOBAL]


@pytest.mark.slow
def test_wrmf_under_user_level_dp_and_secure_aggregation_through_flower() -> None:
    """Poisson cohorts, every segment in the joint clip, central noise on every sum, all through SecAgg+.

    The cohorts are drawn over node ids here and over user ids in the reference loop, so the tables
    differ; the schedule (and so epsilon) is public and must be the same, and the model must learn."""
    cfg = RunConfig.from_flat({**CFG, "model.pop-exponent": 0.0, "dp.unit": "user", "dp.epsilon": 30.0,
                               "dp.cohort-rate": 0.75, "dp.clip": 2.0, "dp.delta": 1e-3, "secagg.enabled": True,
                               "secagg.neighbours": "all", "secagg.clip": 8.0, "secagg.timeout": 120.0})
    grid, history, state = _flower(cfg)
    ref_state, ref_history = train_in_process(load_run_dataset(cfg.data), cfg.model, cfg.fed,
                                              privacy=cfg.privacy_plan())
    assert len(history) == len(ref_history) == 3 and all(0 < r["sampled"] < N_USERS for r in history)
    assert [r["epsilon"] for r in history] == pytest.approx([r["epsilon"] for r in ref_history], rel=1e-9)
    assert history[-1]["dp_unit"] == "user" and 0 < history[-1]["epsilon"] <= 30.0
    start = ServerState.start(N_ITEMS, cfg.model, cfg.fed, global_mean=0.0).glob.item_factors
    assert np.isfinite(state.glob.item_factors).all() and not np.allclose(state.glob.item_factors, start)
    assert history[-1]["hr@10"] >= 0.5 * ref_history[-1]["hr@10"] > 0
    assert not [m for m in grid.replies if m.metadata.message_type == wire.MSG_TRAIN]  # nothing in the clear
