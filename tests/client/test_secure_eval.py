"""A server that lowers the secure evaluation's cohort gets refusals, never a device's metric sums.

The floor of a secure evaluation is the device's own: node config
``secagg-eval-min-cohort`` (what ``fedrec device join --eval-min-cohort`` and
``Device.join(eval_min_cohort=)`` set), else the app's default. The attacks run
the real server code (:func:`secure_evaluate`, :class:`EvalTrip`,
:class:`RoundPipeline`) against the real ClientApp through Flower's Simulation
Engine; each SuperNode carries the node config its owner would give it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fedrec.client.app import make_client_app
from fedrec.client.secure_eval import DEFAULT_EVAL_FLOOR, device_eval_floor
from fedrec.server.app import catalogue_for
from fedrec.server.loop import wait_for_nodes
from fedrec.server.secure_eval import EvalTrip, eval_plan, secure_evaluate
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from testkit import RecordingGrid

from fedrec import wire
from fedrec.errors import SecAggConfigError, SecAggError
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig
from fedrec.secagg import RoundPipeline

N_DEVICES = 6
FLOOR = 5
SMALL = {"synthetic.n-users": N_DEVICES, "synthetic.n-items": 30, "synthetic.mean-interactions": 12,
         "model.dim": 4, "secagg.enabled": True, "secagg.neighbours": "all", "secagg.timeout": 120.0}
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False}}


def node_floor(floor: int) -> Mod:
    """A client mod: the real app's devices as on SuperNodes started with
    ``--node-config secagg-eval-min-cohort=<floor>``."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        node_config = {**context.node_config, wire.NODE_EVAL_MIN_COHORT: floor}
        return call_next(msg, Context(run_id=context.run_id, node_id=context.node_id, node_config=node_config,
                                      state=context.state, run_config=context.run_config))

    return mod


def _evaluation_replies(grid: RecordingGrid, since: int) -> list[Message]:
    return [r for r in grid.replies[since:] if r.metadata.message_type == wire.MSG_SECAGG_EVAL]


def test_a_server_lowering_the_evaluation_cohort_gets_refusals_not_sums() -> None:
    honest = RunConfig.from_flat({**SMALL, "secagg.eval-min-cohort": FLOOR})
    lowered = RunConfig.from_flat({**SMALL, "secagg.eval-min-cohort": 2})  # what a cheating server announces
    box: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        recording = RecordingGrid(grid)
        nodes = wait_for_nodes(grid, N_DEVICES, timeout=120)
        state = ServerState.start(30, honest.model, honest.fed, global_mean=3.0)
        scale = catalogue_for(honest).rating_scale
        # 1. the run configuration lowered: threshold 3 of 6 (a majority of each device's 5 neighbours)
        plan = eval_plan(lowered, state, nodes, 1, rating_scale=scale)
        box["lowered_threshold"] = None if plan is None else plan.threshold
        box["lowered"] = secure_evaluate(recording, lowered, state, nodes, 1, rating_scale=scale)
        box["lowered_replies"] = _evaluation_replies(recording, 0)
        # 2. a cohort of two devices, threshold 1 (the server's own code refuses it, so the server is modified):
        #    the pair's sum and one colluding device's values give the other's
        start = len(recording.replies)
        full = eval_plan(honest, state, nodes, 2, rating_scale=scale)
        assert full is not None
        pair = dataclasses.replace(full, participants=tuple(nodes[:2]), threshold=1)
        try:
            box["pair"] = RoundPipeline().run(EvalTrip(recording, lowered, state, 2, rating_scale=scale), pair)
        except SecAggError as exc:
            box["pair"] = exc
        box["pair_replies"] = _evaluation_replies(recording, start)
        # 3. control: the same devices, an evaluation that meets their floor
        box["honest"] = secure_evaluate(recording, honest, state, nodes, 3, rating_scale=scale)

    client = make_client_app(mods=[node_floor(FLOOR)], run_config=[honest, lowered])
    run_simulation(server_app=app, client_app=client, num_supernodes=N_DEVICES,
                   backend_config=BACKEND)
    assert box["lowered_threshold"] == 3
    assert box["lowered"] == {}, "the server unmasked evaluation sums below the devices' floor"
    assert isinstance(box["pair"], SecAggError), "the server unmasked the sum of two devices"
    for key in ("lowered_replies", "pair_replies"):
        replies = box[key]
        assert replies, key
        for reply in replies:
            assert reply.has_error() and "secagg-eval-min-cohort" in reply.error.reason, key
            assert not reply.has_content() or not reply.content.array_records, key
    assert len(box["lowered_replies"]) == N_DEVICES and len(box["pair_replies"]) == 2
    assert box["honest"]["eval_replies"] == N_DEVICES and box["honest"]["rmse"] > 0


def _context(node_config: dict[str, Any]) -> Context:
    return Context(run_id=0, node_id=1, node_config=node_config, state=None, run_config={})  # type: ignore[arg-type]


def test_the_floor_comes_from_the_node_config_else_the_app() -> None:
    assert device_eval_floor(_context({wire.NODE_EVAL_MIN_COHORT: 9})) == 9
    assert device_eval_floor(_context({wire.NODE_EVAL_MIN_COHORT: "7"})) == 7
    assert device_eval_floor(_context({wire.NODE_IDENTITY: "/dev/id"})) == DEFAULT_EVAL_FLOOR
    # 'fedrec device join --partition-id' sets no num-partitions: a deployed device
    assert device_eval_floor(_context({wire.NODE_PARTITION_ID: 3})) == DEFAULT_EVAL_FLOOR
    # Flower's simulation engine: the simulation's own configuration decides
    assert device_eval_floor(_context({wire.NODE_PARTITION_ID: 3, wire.NODE_NUM_PARTITIONS: 6})) is None


@pytest.mark.parametrize("bad", [1, 0, -4, True, 2.5, "two", ""])
def test_a_malformed_floor_is_refused_by_name(bad: object) -> None:
    with pytest.raises(SecAggConfigError, match="node config 'secagg-eval-min-cohort': must be an integer >= 2"):
        device_eval_floor(_context({wire.NODE_EVAL_MIN_COHORT: bad}))

