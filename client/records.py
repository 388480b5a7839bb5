"""Copying Flower records into fedrec payloads and back (device side; mirrors ``server/records.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrec import wire
from fedrec.deploy.runspec import from_run_config
from fedrec.errors import ConfigError, FedRecError
from fedrec.federated.plan import MIN_SURVIVORS_KEY
from fedrec.model.params import GlobalParams
from fedrec.runconfig import RunConfig
from fedrec.train.local import LocalUpdate

from .node import node_store

_CONFIGS: dict[tuple[Any, ...], RunConfig] = {}


@dataclass(frozen=True)
class Downlink:
    """What a server message tells a device: settings, table, round and (evaluation) the rating scale."""

    cfg: RunConfig
    glob: GlobalParams
    round: int
    rating_scale: tuple[float, float] | None


def parse_downlink(msg: Message, context: Context) -> Downlink:
    """Run configuration, global table, round number and rating scale for a server message.

    The configuration is the run's, from ``context.run_config`` (Flower hands
    every ClientApp the run's configuration), plus ``t_min`` when the server
    resolved it; the downlink carries only the round's facts and the
    configuration's digest, which must match. The rating scale is the server's
    public catalogue fact, so a device never loads the run's dataset to learn it.

    Raises
    ------
    ConfigError
        The device's configuration is not the server's (another digest).
    """
    config = msg.content.config_records[wire.RECORD_CONFIG]
    t_min = int(_number(config, wire.CFG_MIN_SURVIVORS)) if wire.CFG_MIN_SURVIVORS in config else None
    cfg = device_config(context.run_config, t_min=t_min)
    if config.get(wire.CFG_RUN_DIGEST) != cfg.digest:
        raise ConfigError(f"downlink {wire.RECORD_CONFIG}: the server's run configuration (digest "
                          f"{str(config.get(wire.CFG_RUN_DIGEST))[:12]}) is not this device's ({cfg.digest[:12]}, "
                          "from its run config); refusing the round")
    table = msg.content.array_records[wire.RECORD_GLOBAL]
    arrays = {k: wire.decode_downlink(wire.npy_array(v.data)) for k, v in table.items()}
    glob = GlobalParams.from_arrays(arrays, _number(config, wire.CFG_GLOBAL_MEAN))
    scale = None
    if wire.CFG_RATING_MIN in config:
        scale = (_number(config, wire.CFG_RATING_MIN), _number(config, wire.CFG_RATING_MAX))
    return Downlink(cfg, glob, int(_number(config, wire.CFG_ROUND)), scale)


def device_config(run_config: Mapping[str, Any], *, t_min: int | None = None) -> RunConfig:
    """The run's configuration from a ClientApp's ``context.run_config``, validated once per distinct setting.

    ``run_config`` is what ``flwr run`` hands every app (the declared keys, or the
    ``deploy.config`` envelope of ``fedrec server run``; the simulation's ClientApp
    is given the same envelope, :func:`fedrec.client.app.make_client_app`).
    ``t_min`` is the server's ``dp.min-survivors``, applied when the run's own
    configuration leaves it open.
    """
    key = (tuple(sorted(run_config.items())), t_min)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg, _, _ = from_run_config(run_config)
        if t_min is not None and cfg.flat.get(MIN_SURVIVORS_KEY) is None:
            cfg = cfg.with_min_survivors(t_min)
        _CONFIGS.clear()
        _CONFIGS[key] = cfg
    return cfg


def update_content(update: LocalUpdate, metrics: dict[str, float]) -> RecordDict:
    """A plain training reply: the dense update segments and the device's clear metrics."""
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in update.segments().items()})
    values: dict[str, Any] = dict(metrics)
    return RecordDict({wire.RECORD_UPDATE: arrays, wire.RECORD_METRICS: MetricRecord(values)})


def metrics_content(flat: dict[str, float]) -> RecordDict:
    """An evaluation reply: sums and counts only."""
    values: dict[str, Any] = dict(flat)
    return RecordDict({wire.RECORD_METRICS: MetricRecord(values)})


def load_state(context: Context) -> dict[str, np.ndarray]:
    """The device's private arrays (user factors, accountant, SecAgg state): its store's, or ``Context.state``."""
    store = node_store(context)
    if store is not None:
        return store.load()
    record = context.state.array_records.get(wire.STATE_LOCAL)
    return {k: wire.npy_array(v.data) for k, v in record.items()} if record is not None else {}


def save_state(context: Context, state: dict[str, np.ndarray]) -> None:
    """Write the device's private arrays back to its store or ``Context.state`` (never into a reply)."""
    store = node_store(context)
    if store is not None:
        store.save(state)
        return
    context.state[wire.STATE_LOCAL] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def _number(config: ConfigRecord, key: str) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FedRecError(f"downlink {wire.RECORD_CONFIG}: {key!r} must be a number, got {value!r}")
    return float(value)
