"""Copying Flower records into fedrec payloads and back (device side; mirrors ``server/records.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrec import wire
from fedrec.errors import FedRecError
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


def parse_downlink(msg: Message) -> Downlink:
    """Run configuration, global table, round number and rating scale from a server message.

    The configuration is validated once per distinct setting (devices of one
    process share it); the rating scale is the server's public catalogue fact,
    so a device never loads the run's dataset to learn it.
    """
    config = msg.content.config_records[wire.RECORD_CONFIG]
    flat = {k[len(wire.CFG_RUN):]: v for k, v in config.items() if k.startswith(wire.CFG_RUN)}
    key = tuple(sorted(flat.items()))
    cfg = _CONFIGS.get(key)
    if cfg is None:
        _CONFIGS.clear()
        cfg = _CONFIGS[key] = RunConfig.from_flat(flat)
    table = msg.content.array_records[wire.RECORD_GLOBAL]
    arrays = {k: wire.decode_downlink(wire.npy_array(v.data)) for k, v in table.items()}
    glob = GlobalParams.from_arrays(arrays, _number(config, wire.CFG_GLOBAL_MEAN))
    scale = None
    if wire.CFG_RATING_MIN in config:
        scale = (_number(config, wire.CFG_RATING_MIN), _number(config, wire.CFG_RATING_MAX))
    return Downlink(cfg, glob, int(_number(config, wire.CFG_ROUND)), scale)


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
