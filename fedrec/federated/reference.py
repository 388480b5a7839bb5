"""The in-process reference loop: a whole federated run in one process, without Flower.

It runs the same device functions (:mod:`fedrec.federated.device`) and the same
server policy (:mod:`fedrec.federated.policy`) as the Flower apps; it exists to
test the math, to tune hyper-parameters quickly, and to reach population sizes
where Flower's per-message cost (milliseconds per device) would dominate on one
machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from fedrec.data.interactions import Dataset
from fedrec.data.partition import partitions
from fedrec.errors import ConfigError
from fedrec.federated.device import DeviceState, device_evaluate, device_train
from fedrec.federated.plan import PrivacyPlan
from fedrec.federated.policy import server_policy
from fedrec.federated.server_state import FedConfig, ServerState, prior_mean
from fedrec.metrics.core import MetricSums
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams
from fedrec.train.aggregate import RoundSums
from fedrec.train.local import LocalUpdate

log = logging.getLogger(__name__)


ProgressFn = Callable[[int, dict[str, Any]], None]


def train_in_process(dataset: Dataset, model: MFConfig, fed: FedConfig, *,
                  progress: ProgressFn | None = None, privacy: PrivacyPlan | None = None,
                  ) -> tuple[ServerState, list[dict[str, Any]]]:
    """Run rounds in-process, one device per user, with the apps' exact code.

    Each user is a device with its own :data:`~fedrec.federated.device.DeviceState`
    and :class:`~fedrec.data.partition.PartitionSource`; it trains with
    :func:`~fedrec.federated.device.device_train` and evaluates with
    :func:`~fedrec.federated.device.device_evaluate`, and the server side follows
    the same :mod:`~fedrec.federated.policy` policy, in the same order and with
    the same random generator, as the Flower ServerApp. DP noise is drawn from
    seeded streams, so a run is reproducible.

    Differences from the Flower apps: every device answers (no dropouts), the
    round sums are accumulated in float32, and an evaluation covers the users
    trained so far (the apps also fold in devices never sampled).

    Parameters
    ----------
    privacy
        The run's DP plan (:meth:`~fedrec.runconfig.RunConfig.privacy_plan`); None
        trains without DP.

    Returns
    -------
    state, history
        The final server state and one row per evaluated round: the metrics
        and, under DP, the privacy fields of :meth:`ServerPolicy.report`.
    """
    if privacy is not None and privacy.enabled and fed.averaging != "fedavg":
        raise ConfigError(f"strategy.averaging: {fed.averaging!r} needs per-item counts, which DP devices "
                          "do not send; use 'fedavg'")
    train = dataset.train
    by_user = train.by_user()
    sources = partitions(dataset)
    state = ServerState.start(train.n_items, model, fed, global_mean=prior_mean(model.kind, dataset.rating_scale))
    users = [u for u in range(train.n_users) if len(by_user[u])]
    policy = server_policy(privacy, population=len(users))
    size = fed.cohort_size(len(users))
    devices: dict[int, DeviceState] = {}
    history: list[dict[str, Any]] = []

    def evaluate(rnd: int, report: dict[str, Any]) -> None:
        ms = MetricSums()
        for u, device in devices.items():
            ms.merge(device_evaluate(sources[u], device, state.glob, model=model, local=fed.local,
                                     scale=dataset.rating_scale, seed=fed.seed, privacy=privacy))
        row = {"round": float(rnd), **ms.result(), **report}
        history.append(row)
        if progress:
            progress(rnd, row)

    report: dict[str, Any] = {}
    rnd = 0
    for rnd in range(1, fed.rounds + 1):
        if not policy.allows_next_round():
            log.warning("stopping before round %d: the privacy budget dp.epsilon would be exceeded", rnd)
            rnd -= 1
            break
        cohort = policy.cohort(users, size, state.rng)
        sums = _zero_sums(state.glob)
        extra: dict[str, np.ndarray] = {}
        device_metrics = []
        for u in cohort:
            out = device_train(sources[u], devices.setdefault(u, {}), state.glob, model=model, local=fed.local,
                               seed=fed.seed, round_=rnd, privacy=privacy, user_offset=u, seeded_noise=True)
            _accumulate(sums, out.update, extra)
            device_metrics.append(out.metrics)
        noisy, expected = policy.finish_round(RoundSums(sums[0], sums[1], sums[2], len(cohort), extra), state.rng)
        state.apply(noisy, expected_clients=expected)
        report = policy.report(device_metrics)
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            evaluate(rnd, report)
    if rnd and (not history or history[-1]["round"] != rnd):
        evaluate(rnd, report)
    return state, history


def _zero_sums(glob: GlobalParams) -> list[np.ndarray]:
    return [np.zeros_like(glob.item_factors), np.zeros_like(glob.item_bias), np.zeros(glob.n_items, np.float32)]


def _accumulate(sums: list[np.ndarray], update: LocalUpdate, extra: dict[str, np.ndarray]) -> None:
    sums[0] += update.item_factors
    sums[1] += update.item_bias
    sums[2] += update.counts
    for name, arr in update.extra.items():
        extra[name] = extra[name] + arr if name in extra else arr.astype(np.float64)
