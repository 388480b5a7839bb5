"""Under secure aggregation nothing but ``ok`` leaves a device unmasked, in any message type.

Real runs through Flower's Simulation Engine with secure aggregation on,
training and evaluation rounds, under rating-level and user-level DP: every
reply a device sent is captured at the server's Grid and inspected. The
server also tries the plain ``train`` and ``evaluate`` messages a curious
server would send; devices refuse them with an empty error reply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fedrec.client.app import make_client_app
from fedrec.client.device import simulation_source
from fedrec.server.app import catalogue_for
from fedrec.server.loop import _send, train_over_grid, wait_for_nodes
from fedrec.server.records import downlink_record, global_record, train_content
from fedrec.server.secure_eval import secure_evaluate
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from testkit import RecordingGrid

from fedrec import wire
from fedrec.data.spec import load_run_dataset
from fedrec.federated.device import device_evaluate
from fedrec.federated.server_state import ServerState
from fedrec.metrics.core import MetricSums
from fedrec.runconfig import RunConfig

N_DEVICES = 12
SMALL = {"synthetic.n-users": N_DEVICES, "synthetic.n-items": 30, "synthetic.mean-interactions": 12,
         "model.dim": 4, "rounds": 2, "eval-every": 1, "secagg.enabled": True, "secagg.neighbours": "all",
         "secagg.timeout": 120.0, "secagg.eval-min-cohort": 4}
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False}}
DP = {"rating": {"dp.unit": "rating", "dp.epsilon": 8.0},
      "user": {"dp.unit": "user", "dp.epsilon": 50.0, "dp.cohort-rate": 0.9}}




def _run(cfg: RunConfig) -> dict[str, Any]:
    box: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        recording = RecordingGrid(grid)
        box["grid"] = recording
        box["result"] = train_over_grid(recording, cfg, catalogue_for(cfg))
        state = box["result"].state
        nodes = sorted(grid.get_node_ids())
        content = train_content(global_record(state.glob), downlink_record(cfg, round_=9, global_mean=3.0))
        box["plain"] = [_send(recording, content, kind, nodes, 9, 60.0) for kind in (wire.MSG_TRAIN,
                                                                                    wire.MSG_EVALUATE)]

    run_simulation(server_app=app, client_app=make_client_app(run_config=cfg), num_supernodes=N_DEVICES,
                   backend_config=BACKEND)
    return box


def _leaks(reply: Message) -> list[str]:
    """Everything in a reply that is neither ``ok`` nor a masked ring element nor protocol bytes."""
    found = []
    for name, record in reply.content.metric_records.items():
        extra = {k: v for k, v in record.items() if k != wire.MET_OK}
        if extra or record.get(wire.MET_OK, 1.0) != 1.0:
            found.append(f"metric record {name}: {dict(record)}")
    for name, record in reply.content.array_records.items():
        for key, array in record.items():
            arr = array.numpy()
            if arr.dtype.kind not in "u":
                found.append(f"array {name}/{key} of dtype {arr.dtype} (masked vectors are unsigned ring elements)")
    for name, record in reply.content.config_records.items():
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) for v in values):
                found.append(f"config {name}/{key} holds a float: {value!r}")
    return found


@pytest.mark.parametrize("unit", ["rating", "user"])
def test_every_reply_under_secure_aggregation_is_masked_or_ok(unit: str) -> None:
    cfg = RunConfig.from_flat({**SMALL, **DP[unit]})
    box = _run(cfg)
    history = box["result"].history
    assert [row["round"] for row in history] == [1, 2]
    for row in history:
        assert row["dp_unit"] == unit and row["epsilon"] > 0
        assert np.isfinite(row["rmse"]) and row["eval_devices"] == N_DEVICES
    replies = box["grid"].replies
    kinds = {r.metadata.message_type for r in replies}
    assert {wire.MSG_SECAGG, wire.MSG_SECAGG_EVAL} <= kinds
    answered = [r for r in replies if not r.has_error()]
    assert answered
    leaks = [f"{r.metadata.message_type} from {r.metadata.src_node_id}: {leak}" for r in answered for leak in _leaks(r)]
    assert not leaks, "\n".join(leaks[:10])
    for reply in answered:
        if reply.metadata.message_type == wire.MSG_SECAGG_EVAL:
            assert not reply.content.metric_records
    for plain in box["plain"]:
        assert len(plain) == N_DEVICES
        for reply in plain.values():
            assert reply.has_error() and "aggregates securely" in reply.error.reason
            assert not list(reply.content.keys()) if reply.has_content() else True


def test_secure_evaluation_returns_the_cohorts_exact_metrics() -> None:
    """Before any training every device folds itself in on the same table: compare with the plain sum."""
    cfg = RunConfig.from_flat(SMALL)
    box: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        state = ServerState.start(30, cfg.model, cfg.fed, global_mean=3.0)
        box["state"] = state
        box["secure"] = secure_evaluate(grid, cfg, state, wait_for_nodes(grid, N_DEVICES, timeout=120), 1,
                                        rating_scale=catalogue_for(cfg).rating_scale)

    run_simulation(server_app=app, client_app=make_client_app(run_config=cfg), num_supernodes=N_DEVICES,
                   backend_config=BACKEND)
    data = load_run_dataset(cfg.data)
    expected = MetricSums()
    for pid in range(N_DEVICES):
        ctx = Context(run_id=0, node_id=pid, node_config={"partition-id": pid}, state=None, run_config={})  # type: ignore[arg-type]
        expected.merge(device_evaluate(simulation_source(ctx, cfg), {}, box["state"].glob, model=cfg.model,
                                       local=cfg.fed.local, scale=data.rating_scale, seed=cfg.fed.seed,
                                       privacy=cfg.privacy_plan()))
    want = expected.result()
    got = box["secure"]
    assert got["eval_replies"] == N_DEVICES
    for key in ("rmse", "mae"):
        assert got[key] == pytest.approx(want[key], abs=1e-3)
