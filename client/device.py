"""The device's Flower handlers for plain rounds, and the training call the secure path shares.

The device reads its interactions through an :class:`InteractionSource` chosen
by a *source provider*: in simulation, its partition of the run's dataset
(``partition-id`` from the node config); in deployment, the on-device store.
Its private state (user factors) lives in ``Context.state`` and never enters a
reply. Replies carry only the dense update or evaluation sums and counts.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message

from fedrec import wire
from fedrec.data.partition import InteractionSource, PartitionSource, partitions
from fedrec.data.spec import load_run_dataset
from fedrec.errors import ConfigError
from fedrec.federated.device import DeviceRound, device_evaluate, device_train
from fedrec.runconfig import RunConfig

from .records import load_state, metrics_content, parse_downlink, save_state, update_content

SourceProvider = Callable[[Context, RunConfig], InteractionSource]
_PARTITIONS: dict[int, list[PartitionSource]] = {}


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


class TrainHandler:
    """Plain training round. A module-level class, not a closure: the simulation ships the app to
    its workers with every message, and a closure costs about a millisecond to pickle each time."""

    def __init__(self, source: SourceProvider) -> None:
        self.source = source

    def __call__(self, msg: Message, context: Context) -> Message:
        state = load_state(context)
        out = train_device(msg, context, state, self.source)
        save_state(context, state)
        return Message(update_content(out.update, out.metrics), reply_to=msg)


class EvaluateHandler:
    """Evaluation on the device's held-out rows; only sums and counts are returned."""

    def __init__(self, source: SourceProvider) -> None:
        self.source = source

    def __call__(self, msg: Message, context: Context) -> Message:
        down = parse_downlink(msg)
        cfg = down.cfg
        sums = device_evaluate(self.source(context, cfg), load_state(context), down.glob, model=cfg.model,
                               local=cfg.fed.local, scale=down.rating_scale, seed=cfg.fed.seed,
                               privacy=cfg.privacy_plan())
        return Message(metrics_content(sums.flat()), reply_to=msg)


def train_device(msg: Message, context: Context, state: dict[str, np.ndarray], source: SourceProvider) -> DeviceRound:
    """Train the device's users on the downlink table; the plain and the secure train paths both call this."""
    down = parse_downlink(msg)
    cfg = down.cfg
    return device_train(source(context, cfg), state, down.glob, model=cfg.model, local=cfg.fed.local,
                        seed=cfg.fed.seed, round_=down.round, privacy=cfg.privacy_plan(),
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
