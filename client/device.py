"""The device's Flower handlers for plain rounds, and the training call the secure path shares.

The device reads its interactions through an :class:`InteractionSource` chosen
by a *source provider*: in simulation, its partition of the run's dataset
(``partition-id`` from the node config); in deployment, the on-device store.
Its private state (user factors) lives in ``Context.state`` and never enters a
reply. Replies carry only the dense update or evaluation sums and counts; under
secure aggregation both handlers refuse (the secure paths answer instead).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message

from fedrec import wire
from fedrec.data.partition import InteractionSource, n_partitions, partition_of
from fedrec.data.spec import shared_run_dataset
from fedrec.errors import ConfigError, SecAggError
from fedrec.federated.device import DeviceRound, device_evaluate, device_train
from fedrec.runconfig import RunConfig

from .node import store_source
from .records import Downlink, load_state, metrics_content, parse_downlink, save_state, update_content

SourceProvider = Callable[[Context, RunConfig], InteractionSource]


def simulation_source(context: Context, cfg: RunConfig) -> InteractionSource:
    """The device's partition of the run's dataset (``partition-id`` from the node config).

    The dataset is the memory-mapped store the driver wrote once; the device's
    rows are sliced from it now, for this message only.
    """
    dataset = shared_run_dataset(cfg.data)
    pid = int(context.node_config.get("partition-id", -1))
    upc = cfg.data.users_per_client
    count = n_partitions(dataset.n_users, users_per_client=upc)
    if not 0 <= pid < count:
        raise ConfigError(f"partition-id {pid} outside the {count} partitions of {cfg.data.dataset!r}")
    return dataset.source(partition_of(dataset.n_users, pid, users_per_client=upc, seed=cfg.fed.seed))


def device_source(context: Context, cfg: RunConfig) -> InteractionSource:
    """The on-device store when the node config names one (``Device.join``), else the simulation partition."""
    if wire.NODE_STORE in context.node_config:
        return store_source(context, cfg)
    return simulation_source(context, cfg)


class TrainHandler:
    """Plain training round. A module-level class, not a closure: the simulation ships the app to
    its workers with every message, and a closure costs about a millisecond to pickle each time.

    ``seeded_noise``: see :func:`train_device`.
    """

    def __init__(self, source: SourceProvider, *, seeded_noise: bool = False) -> None:
        self.source, self.seeded_noise = source, seeded_noise

    def __call__(self, msg: Message, context: Context) -> Message:
        refuse_plain_under_secagg(msg, context)
        state = load_state(context)
        out = train_device(msg, context, state, self.source, seeded_noise=self.seeded_noise)
        save_state(context, state)
        return Message(update_content(out.update, out.metrics), reply_to=msg)


class EvaluateHandler:
    """Evaluation on the device's held-out rows; only sums and counts are returned."""

    def __init__(self, source: SourceProvider) -> None:
        self.source = source

    def __call__(self, msg: Message, context: Context) -> Message:
        down = refuse_plain_under_secagg(msg, context)
        cfg = down.cfg
        sums = device_evaluate(self.source(context, cfg), load_state(context), down.glob, model=cfg.model,
                               local=cfg.fed.local, scale=down.rating_scale, seed=cfg.fed.seed,
                               privacy=cfg.privacy_plan())
        return Message(metrics_content(sums.flat()), reply_to=msg)


def refuse_plain_under_secagg(msg: Message, context: Context) -> Downlink:
    """The downlink, unless the run aggregates securely: then a plain reply would leave the device in the clear.

    Raises
    ------
    SecAggError
        ``secagg.enabled`` is on (Flower turns it into an error reply, which carries nothing).
    """
    down = parse_downlink(msg, context)
    if down.cfg.secagg.enabled:
        raise SecAggError(f"{msg.metadata.message_type}: refused, this run aggregates securely (secagg.enabled); "
                          "training and evaluation answer only through the secure sum")
    return down


def train_device(msg: Message, context: Context, state: dict[str, np.ndarray], source: SourceProvider, *,
                 seeded_noise: bool = False) -> DeviceRound:
    """Train the device's users on the downlink table; the plain and the secure train paths both call this.

    ``seeded_noise`` draws the DP noise (and rating-level batch sampling) from
    streams of the run's ``seed``, round and device, as the reference loop
    does: a simulation's ClientApp sets it (``simulations/runner.py``), so a
    run is reproducible and a resumed run continues exactly. It is the
    ClientApp's choice, never the downlink's: the deployed app leaves it off
    (fresh OS entropy), and ``dp.secure-mode`` ignores it.
    """
    down = parse_downlink(msg, context)
    cfg = down.cfg
    return device_train(source(context, cfg), state, down.glob, model=cfg.model, local=cfg.fed.local,
                        seed=cfg.fed.seed, round_=down.round, privacy=cfg.privacy_plan(),
                        user_offset=stream_offset(context, cfg, state), seeded_noise=seeded_noise)


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
