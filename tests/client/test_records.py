"""The downlink carries the round's facts; the run configuration comes from ``context.run_config``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fedrec.client.records import parse_downlink
from fedrec.server.records import downlink_record, global_record, train_content
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrec import wire
from fedrec.deploy.runspec import envelope
from fedrec.errors import ConfigError
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig

SMALL = {"synthetic.n-users": 10, "synthetic.n-items": 12, "model.dim": 4}


@pytest.fixture(autouse=True)
def _server_identity() -> Iterator[None]:
    """Flower stamps a new message with the sender's run and task: play the ServerApp's, then restore."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _message(cfg: RunConfig, **kwargs: Any) -> Message:
    state = ServerState.start(12, cfg.model, cfg.fed, global_mean=3.5)
    content = train_content(global_record(state.glob), downlink_record(cfg, round_=3, global_mean=3.5, **kwargs))
    return Message(content, dst_node_id=7, message_type=wire.MSG_TRAIN)


def _context(run_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=run_config)


def test_the_downlink_holds_only_the_rounds_facts() -> None:
    cfg = RunConfig.from_flat(SMALL)
    train = dict(_message(cfg).content.config_records[wire.RECORD_CONFIG])
    assert set(train) == {wire.CFG_ROUND, wire.CFG_GLOBAL_MEAN, wire.CFG_RUN_DIGEST}
    assert train[wire.CFG_RUN_DIGEST] == cfg.digest and len(cfg.digest) == 64
    evaluate = dict(_message(cfg, rating_scale=(1.0, 5.0)).content.config_records[wire.RECORD_CONFIG])
    assert (evaluate[wire.CFG_RATING_MIN], evaluate[wire.CFG_RATING_MAX]) == (1.0, 5.0)
    assert not any(key in evaluate for key in cfg.flat)


def test_a_device_reads_the_run_configuration_from_its_context() -> None:
    cfg = RunConfig.from_flat({**SMALL, "local.lr": 0.2})
    down = parse_downlink(_message(cfg), _context(envelope(cfg, resume=False)))
    assert down.cfg == cfg and down.round == 3 and down.glob.global_mean == 3.5 and down.rating_scale is None
    declared = parse_downlink(_message(cfg), _context(dict(cfg.flat)))  # plain `flwr run`: the declared keys
    assert declared.cfg == cfg
    np.testing.assert_array_equal(down.glob.item_factors, declared.glob.item_factors)


def test_a_device_with_another_configuration_refuses_the_round() -> None:
    server = RunConfig.from_flat({**SMALL, "local.lr": 0.2})
    device = RunConfig.from_flat({**SMALL, "local.lr": 0.3})
    with pytest.raises(ConfigError, match="run configuration .*digest"):
        parse_downlink(_message(server), _context(envelope(device, resume=False)))
    with pytest.raises(ConfigError, match="digest"):
        parse_downlink(_message(server), _context({}))  # no configuration at all: the defaults are not the server's


def test_the_server_resolved_t_min_reaches_the_device() -> None:
    """Distributed noise: ``t_min`` depends on the population, which only the server knows."""
    base = RunConfig.from_flat({**SMALL, "dp.unit": "user", "dp.noise": "distributed", "dp.epsilon": 8.0,
                                "dp.cohort-rate": 0.5})
    server = base.for_population(40)
    assert server.flat["dp.min-survivors"] == 20 and "dp.min-survivors" not in base.flat
    record = _message(server).content.config_records[wire.RECORD_CONFIG]
    assert record[wire.CFG_MIN_SURVIVORS] == 20
    down = parse_downlink(_message(server), _context(envelope(base, resume=False)))
    assert down.cfg == server and down.cfg.privacy_plan() == server.privacy_plan()
