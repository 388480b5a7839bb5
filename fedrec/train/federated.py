"""Federated training logic, independent of any transport.

The Flower apps in ``server/`` and ``client/`` are thin adapters over this
module: the server keeps a :class:`ServerState` and feeds it the round's sums
through a privacy policy (:mod:`fedrec.privacy.server`); the client calls
:func:`fedrec.train.device.device_train`, which calls :func:`client_round`.
:func:`run_reference` runs the same device functions and the same policy in one
process, without Flower; it exists to test the math, to tune hyper-parameters
quickly, and to reach population sizes where Flower's per-message cost
(milliseconds per device) would dominate on one machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.data.interactions import Dataset
from fedrec.errors import ConfigError
from fedrec.metrics.core import MetricSums, ranking_sums, rating_sums
from fedrec.model.mf import MFConfig, score_items
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.train.aggregate import (
    AVERAGINGS,
    RoundSums,
    ServerOptConfig,
    ServerOptimizer,
    pseudo_gradient,
)
from fedrec.train.local import LocalConfig, LocalUpdate, local_update

if TYPE_CHECKING:
    from fedrec.privacy.plan import PrivacyPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FedConfig:
    """How rounds run (the model's settings are in :class:`MFConfig`).

    Attributes
    ----------
    rounds:
        Number of training rounds.
    cohort:
        Devices per round: an integer count, or a fraction in (0, 1] of the population.
    averaging:
        ``"item"`` or ``"fedavg"`` (see :mod:`fedrec.train.aggregate`).
    eval_every:
        Evaluate on devices every N rounds (and always after the last round).
    eval_cohort:
        Devices per evaluation, as ``cohort`` (a count, capped at the
        population, or a fraction; ``1.0`` is everyone). A sample estimates the
        population's metrics at a cost that does not grow with it.
    seed:
        Seeds cohort sampling and device randomness.
    """

    rounds: int = 30
    cohort: float = 1.0
    local: LocalConfig = field(default_factory=LocalConfig)
    server: ServerOptConfig = field(default_factory=ServerOptConfig)
    averaging: str = "item"
    eval_every: int = 5
    seed: int = 0
    eval_cohort: float = 1.0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be >= 1, got {self.rounds}")
        if self.cohort <= 0:
            raise ConfigError(f"cohort: must be > 0, got {self.cohort}")
        if self.averaging not in AVERAGINGS:
            raise ConfigError(f"strategy.averaging: {self.averaging!r} is not one of {AVERAGINGS}")
        if self.eval_every < 1:
            raise ConfigError(f"eval-every: must be >= 1, got {self.eval_every}")
        if self.eval_cohort <= 0:
            raise ConfigError(f"eval-cohort: must be > 0 or 'all', got {self.eval_cohort}")

    def cohort_size(self, population: int) -> int:
        """Devices per round for a population; ``ConfigError`` if larger than it."""
        size = round(self.cohort * population) if self.cohort <= 1 else int(self.cohort)
        if size > population:
            raise ConfigError(f"cohort: {size} devices per round but the population is {population}")
        return max(size, 1)


    def eval_size(self, population: int) -> int:
        """Devices per evaluation: ``eval_cohort`` of the population, at most all of it."""
        size = round(self.eval_cohort * population) if self.eval_cohort <= 1 else int(self.eval_cohort)
        return min(max(size, 1), population)


EVAL_STREAM = 2**62 + 7
"""Entropy word of the evaluation-cohort streams; training cohorts never draw from them."""


def sample_eval_cohort(nodes: Sequence[int], size: int, *, seed: int, round_: int) -> list[int]:
    """The devices that evaluate after ``round_``: a uniform sample, in node order.

    Drawn from its own stream (``seed``, ``round_``), so sampling it never
    shifts the training cohorts or the server's noise.
    """
    if size >= len(nodes):
        return list(nodes)
    rng = np.random.default_rng([seed, EVAL_STREAM, round_])
    return [nodes[i] for i in np.sort(rng.choice(len(nodes), size=size, replace=False))]


def sample_cohort(nodes: Sequence[int], size: int, rng: np.random.Generator, *,
                  poisson_rate: float | None = None) -> list[int]:
    """A fixed-size uniform sample, or a Poisson sample (each node independently).

    Poisson sampling with rate ``q`` is what the user-level DP accountant's
    amplification-by-sampling assumes; the fixed-size sample is used otherwise.
    """
    nodes = list(nodes)
    if poisson_rate is not None:
        return [n for n, keep in zip(nodes, rng.random(len(nodes)) < poisson_rate, strict=True) if keep]
    idx = rng.choice(len(nodes), size=min(size, len(nodes)), replace=False)
    return [nodes[i] for i in sorted(idx)]


@dataclass
class ServerState:
    """Everything the server needs to continue a run: table, optimizer, round, RNG."""

    glob: GlobalParams
    optimizer: ServerOptimizer
    averaging: str = "item"
    round: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @classmethod
    def start(cls, n_items: int, model: MFConfig, fed: FedConfig, *, global_mean: float) -> ServerState:
        glob = GlobalParams.init(n_items, model.dim, init_std=model.init_std, global_mean=global_mean,
                                 seed=fed.seed)
        return cls(glob, ServerOptimizer(fed.server), fed.averaging, 0, np.random.default_rng(fed.seed))

    def apply(self, sums: RoundSums, *, expected_clients: float | None = None) -> GlobalParams:
        """Move the table by one round's sums and count the round.

        A round nobody survived leaves the table as it is, unless the divisor is
        the expected cohort: under user-level DP the noisy sum is the released
        output whatever the cohort was.
        """
        if sums.n_clients > 0 or expected_clients is not None:
            dq, db = pseudo_gradient(sums, averaging=self.averaging,  # type: ignore[arg-type]
                                     expected_clients=expected_clients)
            self.glob = self.optimizer.apply(self.glob, dq, db)
        self.round += 1
        return self.glob


def prior_mean(scale: tuple[float, float] | None) -> float:
    """The public prior for ``mu``: the middle of the rating scale (0 for implicit data).

    Federated runs use it instead of the data mean, which would have to be
    computed from the devices' ratings; biases absorb the difference (on
    ML-100K the midpoint is no worse than the true mean).
    """
    return 0.0 if scale is None else (scale[0] + scale[1]) / 2.0


def client_round(glob: GlobalParams, local: LocalParams | None, items: np.ndarray, ratings: np.ndarray, *,
                 model: MFConfig, config: LocalConfig, rng: np.random.Generator,
                 timestamps: np.ndarray | None = None) -> tuple[LocalUpdate, LocalParams]:
    """One device's contribution: train locally, return (dense update, new LOCAL state)."""
    if local is None:
        local = initial_local(model, rng)
    return local_update(glob, local, items, ratings, model=model, config=config, rng=rng, timestamps=timestamps)


def initial_local(model: MFConfig, rng: np.random.Generator) -> LocalParams:
    """A new device's user factor: small random for implicit (a zero factor gets no gradient)."""
    if model.kind == "implicit":
        return LocalParams(rng.normal(0.0, model.init_std, model.dim).astype(np.float32), 0.0)
    return LocalParams.zeros(model.dim)


def client_evaluate(glob: GlobalParams, local: LocalParams, train_items: np.ndarray, test_items: np.ndarray,
                    test_ratings: np.ndarray, *, kind: str, scale: tuple[float, float] | None,
                    ks: tuple[int, ...] = (10,)) -> MetricSums:
    """Metrics on the device's held-out rows, as sums and counts only."""
    if len(test_items) == 0:
        return MetricSums()
    scores = score_items(glob, local)
    if kind == "explicit":
        return rating_sums(scores[test_items], test_ratings, scale)
    return ranking_sums(scores[None, :].copy(), [train_items], [test_items], ks=ks)


ProgressFn = Callable[[int, dict[str, Any]], None]


def run_reference(dataset: Dataset, model: MFConfig, fed: FedConfig, *,
                  progress: ProgressFn | None = None, privacy: PrivacyPlan | None = None,
                  ) -> tuple[ServerState, list[dict[str, Any]]]:
    """Run rounds in-process, one device per user, with the apps' exact code.

    Each user is a device with its own :data:`~fedrec.train.device.DeviceState`
    and :class:`~fedrec.data.partition.PartitionSource`; it trains with
    :func:`~fedrec.train.device.device_train` and evaluates with
    :func:`~fedrec.train.device.device_evaluate`, and the server side follows
    the same :mod:`~fedrec.privacy.server` policy, in the same order and with
    the same random generator, as the Flower ServerApp. DP noise is drawn from
    seeded streams, so a run is reproducible.

    Differences from the Flower apps: every device answers (no dropouts), the
    round sums are accumulated in float32, and an evaluation covers the users
    trained so far (the apps also fold in devices never sampled).

    Parameters
    ----------
    privacy
        The run's DP plan (:func:`~fedrec.privacy.plan.privacy_plan`); None
        trains without DP.

    Returns
    -------
    state, history
        The final server state and one row per evaluated round: the metrics
        and, under DP, the privacy fields of :meth:`ServerPolicy.report`.
    """
    from fedrec.data.partition import partitions
    from fedrec.privacy.server import server_policy
    from fedrec.train.device import DeviceState, device_evaluate, device_train

    if privacy is not None and privacy.enabled and fed.averaging != "fedavg":
        raise ConfigError(f"strategy.averaging: {fed.averaging!r} needs per-item counts, which DP devices "
                          "do not send; use 'fedavg'")
    train = dataset.train
    by_user = train.by_user()
    sources = partitions(dataset)
    mu = prior_mean(dataset.rating_scale) if model.kind == "explicit" else 0.0
    state = ServerState.start(train.n_items, model, fed, global_mean=mu)
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
        device_metrics = []
        for u in cohort:
            out = device_train(sources[u], devices.setdefault(u, {}), state.glob, model=model, local=fed.local,
                               seed=fed.seed, round_=rnd, privacy=privacy, user_offset=u, seeded_noise=True)
            _accumulate(sums, out.update)
            device_metrics.append(out.metrics)
        noisy, expected = policy.finish_round(RoundSums(sums[0], sums[1], sums[2], len(cohort)), state.rng)
        state.apply(noisy, expected_clients=expected)
        report = policy.report(device_metrics)
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            evaluate(rnd, report)
    if rnd and (not history or history[-1]["round"] != rnd):
        evaluate(rnd, report)
    return state, history


def _zero_sums(glob: GlobalParams) -> list[np.ndarray]:
    return [np.zeros_like(glob.item_factors), np.zeros_like(glob.item_bias), np.zeros(glob.n_items, np.float32)]


def _accumulate(sums: list[np.ndarray], update: LocalUpdate) -> None:
    sums[0] += update.item_factors
    sums[1] += update.item_bias
    sums[2] += update.counts
