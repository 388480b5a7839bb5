"""End-to-end runs on Flower's Simulation Engine (real ServerApp, ClientApp, Ray workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedrec.client.app import make_client_app
from fedrec.client.device import simulation_source
from fedrec.simulations.runner import simulate
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from testkit import RecordingGrid, train_on_simulation_engine

from fedrec import wire
from fedrec.runconfig import RunConfig

SMALL = {"synthetic.n-users": 24, "synthetic.n-items": 40, "synthetic.mean-interactions": 12, "rounds": 2,
         "eval-every": 1, "model.dim": 4}


def _run(cfg: RunConfig, client: ClientApp, n_devices: int) -> tuple[RecordingGrid | None, list[Any]]:
    grid, result = train_on_simulation_engine(cfg, n_devices, client_app=client)
    return grid, result.history


def test_simulate_writes_the_run_folder(tmp_path: Path) -> None:
    cfg = RunConfig.from_flat({**SMALL, "eval-cohort": 10})
    result = simulate(cfg, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.toml", "metrics.jsonl", "checkpoint.npz", "metrics.png", "report.md"} <= files
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["survivors"] == 24 for r in rows)
    assert [r["eval_devices"] for r in rows] == [10, 10]  # a sampled evaluation says how many devices it had
    assert [r["eval_replies"] for r in rows] == [10, 10]  # and how many of them answered
    assert result.final["rmse"] < 2.0


def test_what_a_device_sends_contains_no_private_data() -> None:
    """Capture the real replies: only the dense GLOBAL update, sums/counts and flags leave a device."""
    cfg = RunConfig.from_flat(SMALL)
    grid, _ = _run(cfg, make_client_app(run_config=cfg), 24)
    assert grid is not None and grid.replies
    n_items, dim = 40, 4
    train_replies = [r for r in grid.replies if r.metadata.message_type == wire.MSG_TRAIN]
    eval_replies = [r for r in grid.replies if r.metadata.message_type == wire.MSG_EVALUATE]
    assert len(train_replies) == 48 and len(eval_replies) == 48
    for reply in train_replies:
        content = reply.content
        assert set(content.keys()) == {wire.RECORD_UPDATE, wire.RECORD_METRICS}
        arrays = {k: v.numpy() for k, v in content.array_records[wire.RECORD_UPDATE].items()}
        assert {k: a.shape for k, a in arrays.items()} == {
            "item_factors": (n_items, dim), "item_bias": (n_items,), "counts": (n_items,)}
        assert all(a.dtype == np.float32 for a in arrays.values())  # no integer id lists
        assert dict(content.metric_records[wire.RECORD_METRICS]) == {wire.MET_OK: 1.0}
    for reply in eval_replies:
        keys = set(reply.content.metric_records[wire.RECORD_METRICS])
        assert keys and all(k.endswith((".sum", ".count")) for k in keys)
        assert not reply.content.array_records and not reply.content.config_records


def test_plain_update_is_the_dense_delta_and_no_rating(tmp_path: Path) -> None:
    """Plain mode's contract: devices send only the dense delta of the global table, no raw rating.

    A plain MF item-factor delta is a scaled copy of the user factor; only secure
    aggregation hides it (``tests/server/test_secagg_flower.py`` checks every reply for it).
    """
    cfg = RunConfig.from_flat({**SMALL, "rounds": 1, "eval-every": 5})
    log_dir = tmp_path

    def probe(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type == wire.MSG_TRAIN:
            pid = context.node_config["partition-id"]
            np.save(log_dir / f"ratings-{pid}.npy", simulation_source(context, cfg).train().ratings)
            update = reply.content.array_records[wire.RECORD_UPDATE]
            deltas = [update[k].numpy().ravel() for k in (wire.ARRAY_ITEM_FACTORS, wire.ARRAY_ITEM_BIAS)]
            np.save(log_dir / f"sent-{pid}.npy", np.concatenate(deltas))
        return reply

    _run(cfg, make_client_app(mods=[probe], run_config=cfg), 24)
    sent_files = sorted(log_dir.glob("sent-*.npy"))
    assert len(sent_files) == 24
    for f in sent_files:
        pid = f.stem.split("-")[1]
        sent = np.load(f).astype(np.float64)
        ratings = np.load(log_dir / f"ratings-{pid}.npy")
        assert sent.shape == (40 * 4 + 40,)
        assert not np.isin(np.round(sent, 6), ratings[ratings != 0]).any(), "a raw rating left the device"


def test_dropouts_do_not_stop_the_run() -> None:
    """Devices that raise are dropped; the round aggregates the survivors and counts the dropouts."""
    cfg = RunConfig.from_flat({**SMALL, "rounds": 2, "eval-every": 5})
    real = make_client_app(run_config=cfg)
    flaky = ClientApp()

    @flaky.train()
    def train(msg: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) % 4 == 0:
            raise RuntimeError("device went offline")
        return real(msg, context)

    @flaky.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real(msg, context)

    _, history = _run(cfg, flaky, 24)
    assert [r["dropouts"] for r in history] == [6, 6]
    assert [r["survivors"] for r in history] == [18, 18]
    assert "rmse" in history[-1]


def test_bad_config_fails_before_the_first_round() -> None:
    from fedrec.simulations.runner import validate

    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="cohort"):
        validate(RunConfig.from_flat({**SMALL, "cohort": 100}))


def test_a_simulation_refuses_an_authority_key_file() -> None:
    """A simulation's server verifies devices under the runner's own authority; a deployment's key file is refused."""
    from fedrec.simulations.runner import validate

    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="secagg.authority-key: .* is for deployed runs"):
        validate(RunConfig.from_flat({**SMALL, "secagg.enabled": True, "secagg.authority-key": "authority.pub"}))


@pytest.mark.slow
def test_a_device_that_times_out_is_a_dropout() -> None:
    """Round 2: one device answers after the round timeout; the round goes on without it.

    Slow by nature (the server must wait out the timeout), so outside the default run.
    """
    cfg = RunConfig.from_flat({**SMALL, "rounds": 2, "eval-every": 5, "round-timeout": 15.0})
    real = make_client_app(run_config=cfg)
    slow = ClientApp()

    @slow.train()
    def train(msg: Message, context: Context) -> Message:
        late = msg.content.config_records[wire.RECORD_CONFIG][wire.CFG_ROUND] == 2
        if late and int(context.node_config["partition-id"]) == 0:
            import time

            time.sleep(cfg.round_timeout + 5)
        return real(msg, context)

    @slow.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real(msg, context)

    _, history = _run(cfg, slow, 24)
    assert [r["dropouts"] for r in history] == [0, 1]
    assert [r["survivors"] for r in history] == [24, 23]
