"""Flower ClientApp: a thin adapter from messages to :mod:`fedrec.train.device`.

The device reads its interactions through an :class:`InteractionSource` chosen
by a *source provider*: in simulation, its partition of the run's dataset
(``partition-id`` from the node config); in deployment, the on-device store.
Its private state (user factors) lives in ``Context.state`` and never enters a
reply. Replies carry only the dense update (plain, or masked under secure
aggregation) or evaluation sums and counts.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedrec import wire
from fedrec.data.partition import InteractionSource, partitions
from fedrec.errors import ConfigError
from fedrec.model.params import GlobalParams
from fedrec.privacy.plan import privacy_plan
from fedrec.runconfig import RunConfig, load_run_dataset
from fedrec.train.device import DeviceRound, device_evaluate, device_train

from .node import node_store, store_source

log = logging.getLogger(__name__)

SourceProvider = Callable[[Context, RunConfig], InteractionSource]
_PARTITIONS: dict[int, list] = {}
_CONFIGS: dict[tuple, RunConfig] = {}


def simulation_source(context: Context, cfg: RunConfig) -> InteractionSource:
    """The device's partition of the run's dataset (``partition-id`` from the node config)."""
    dataset = load_run_dataset(cfg.data)
    parts = _PARTITIONS.get(id(dataset))
    if parts is None:
        _PARTITIONS.clear()
        parts = _PARTITIONS[id(dataset)] = partitions(dataset, cfg.data.users_per_client, seed=cfg.fed.seed)
    pid = int(context.node_config.get("partition-id", -1))
    if not 0 <= pid < len(parts):
        raise ConfigError(f"partition-id {pid} outside the {len(parts)} partitions of {cfg.data.dataset!r}")
    return parts[pid]


def device_source(context: Context, cfg: RunConfig) -> InteractionSource:
    """The on-device store when the node config names one (``Device.join``), else the simulation partition."""
    if wire.NODE_STORE in context.node_config:
        return store_source(context, cfg)
    return simulation_source(context, cfg)


def make_client_app(source: SourceProvider = device_source, *, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp whose devices read their rows through ``source``; ``mods`` are Flower client mods."""
    app = ClientApp(mods=mods)

    app.train()(TrainHandler(source))
    app.evaluate()(EvaluateHandler(source))
    from .secagg import register_secagg

    register_secagg(app, source)
    return app


class TrainHandler:
    """Plain training round. A module-level class, not a closure: the simulation ships the app to
    its workers with every message, and a closure costs about a millisecond to pickle each time."""

    def __init__(self, source: SourceProvider) -> None:
        self.source = source

    def __call__(self, msg: Message, context: Context) -> Message:
        state = load_state(context)
        out = train_device(msg, context, state, self.source)
        save_state(context, state)
        update = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in out.update.segments().items()})
        metrics: dict[str, Any] = dict(out.metrics)
        return Message(RecordDict({wire.RECORD_UPDATE: update, wire.RECORD_METRICS: MetricRecord(metrics)}),
                       reply_to=msg)


class EvaluateHandler:
    """Evaluation on the device's held-out rows; only sums and counts are returned."""

    def __init__(self, source: SourceProvider) -> None:
        self.source = source

    def __call__(self, msg: Message, context: Context) -> Message:
        cfg, glob, _ = parse_downlink(msg)
        sums = device_evaluate(self.source(context, cfg), load_state(context), glob, model=cfg.model,
                               local=cfg.fed.local, scale=_scale(cfg), seed=cfg.fed.seed, privacy=privacy_plan(cfg))
        flat: dict[str, Any] = dict(sums.flat())
        return Message(RecordDict({wire.RECORD_METRICS: MetricRecord(flat)}), reply_to=msg)


def train_device(msg: Message, context: Context, state: dict[str, np.ndarray], source: SourceProvider) -> DeviceRound:
    """Train the device's users on the downlink table; the plain and the secure train paths both call this."""
    cfg, glob, rnd = parse_downlink(msg)
    return device_train(source(context, cfg), state, glob, model=cfg.model, local=cfg.fed.local,
                        seed=cfg.fed.seed, round_=rnd, privacy=privacy_plan(cfg),
                        user_offset=stream_offset(context, cfg, state))


def stream_offset(context: Context, cfg: RunConfig, state: dict[str, np.ndarray]) -> int:
    """Where this device's training-randomness streams start, distinct per device.

    Without it every one-user device would draw the same negatives and the same
    minibatch order. A simulated device derives it from its partition id (so a
    run is reproducible); a real device draws it once from OS entropy and keeps
    it in its state.
    """
    pid = context.node_config.get("partition-id")
    if pid is not None:
        return int(pid) * max(cfg.data.users_per_client, 1)
    if wire.STATE_STREAM not in state:
        state[wire.STATE_STREAM] = np.array([secrets.randbits(62)], np.int64)
    return int(state[wire.STATE_STREAM][0])


def parse_downlink(msg: Message) -> tuple[RunConfig, GlobalParams, int]:
    """Run configuration, global table and round number from a server message."""
    config = msg.content.config_records[wire.RECORD_CONFIG]
    flat = {k[len(wire.CFG_RUN):]: v for k, v in config.items() if k.startswith(wire.CFG_RUN)}
    key = tuple(sorted(flat.items()))
    cfg = _CONFIGS.get(key)
    if cfg is None:
        _CONFIGS.clear()
        cfg = _CONFIGS[key] = RunConfig.from_flat(flat)
    arrays = {k: v.numpy() for k, v in msg.content.array_records[wire.RECORD_GLOBAL].items()}
    glob = GlobalParams.from_arrays(arrays, float(config[wire.CFG_GLOBAL_MEAN]))  # type: ignore[arg-type]
    return cfg, glob, int(config[wire.CFG_ROUND])  # type: ignore[arg-type]


def load_state(context: Context) -> dict[str, np.ndarray]:
    """The device's private arrays (user factors, accountant, SecAgg state): the store's, or ``Context.state``."""
    store = node_store(context)
    if store is not None:
        return store.load()
    record = context.state.array_records.get(wire.STATE_LOCAL)
    return {k: v.numpy() for k, v in record.items()} if record is not None else {}


def save_state(context: Context, state: dict[str, np.ndarray]) -> None:
    store = node_store(context)
    if store is not None:
        store.save(state)
        return
    context.state[wire.STATE_LOCAL] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def _scale(cfg: RunConfig) -> tuple[float, float] | None:
    return load_run_dataset(cfg.data).rating_scale


app = make_client_app()
