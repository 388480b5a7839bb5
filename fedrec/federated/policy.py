"""Server-side privacy policy: who takes part, what noise the sum gets, when the run stops.

A policy sees only what the server sees: the node list, the summed update of
a round and the scalars devices state in the clear. It is pure (no transport):
the Flower ServerApp (``server/loop.py``) and the in-process reference loop
(:func:`fedrec.federated.reference.run_reference`) call the same methods in the
same order, with the same random generator, so DP behaves identically in both:

    if not policy.allows_next_round(): stop
    cohort = policy.cohort(nodes, size, rng)
    ... devices train, the server sums the survivors' updates ...
    sums, expected = policy.finish_round(sums, rng)
    state.apply(sums, expected_clients=expected)
    row.update(policy.report(device_metrics))

* :class:`ServerPolicy` (``dp.unit = off``): fixed-size cohorts, nothing added.
* :class:`RatingLevelPolicy`: fixed-size cohorts; the noise is the devices'
  own (DP-SGD), so the server only summarises the spent budgets they report
  and stops once every device it hears from is out of budget.
* :class:`UserLevelPolicy`: Poisson cohorts with rate ``q``, Gaussian noise
  on the sum (all of it centrally, or the shortfall below ``t_min`` survivors
  under distributed noise), fedavg over the expected cohort ``q N``, one
  accountant step per round and a stop before the round that would exceed
  ``dp.epsilon``.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedrec import wire
from fedrec.errors import ConfigError, PrivacyError
from fedrec.federated.plan import OFF, PrivacyPlan, RatingLevelPlan, UserLevelPlan, check_population
from fedrec.federated.server_state import sample_cohort
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.privacy.noise import gaussian_noise
from fedrec.train.aggregate import RoundSums

log = logging.getLogger(__name__)

#: Round-row keys every DP policy reports.
ROW_EPSILON = "epsilon"
ROW_DELTA = "delta"
ROW_UNIT = "dp_unit"
ROW_ACCOUNTANT = "accountant"


class ServerPolicy:
    """No privacy (``dp.unit = off``): fixed-size cohorts, sums left as they are."""

    unit = "off"

    def cohort(self, nodes: Sequence[int], size: int, rng: np.random.Generator) -> list[int]:
        """The devices asked to train this round."""
        return sample_cohort(nodes, size, rng)

    def allows_next_round(self) -> bool:
        """False once one more round would break the privacy budget."""
        return True

    def finish_round(self, sums: RoundSums, rng: np.random.Generator) -> tuple[RoundSums, float | None]:
        """The sums to apply and the fedavg divisor (None: the survivors)."""
        return sums, None

    def report(self, device_metrics: Sequence[Mapping[str, float]]) -> dict[str, Any]:
        """Privacy fields of the round's metrics row."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state to persist in the server checkpoint."""
        return {"unit": self.unit}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a checkpoint of the same unit)."""
        if state and state.get("unit", self.unit) != self.unit:
            raise PrivacyError(f"checkpoint privacy state is for dp.unit={state.get('unit')!r}, "
                               f"this run has dp.unit={self.unit!r}")


class RatingLevelPolicy(ServerPolicy):
    """Rating-level DP: the devices add the noise; the server reports their spent budgets.

    Each round row carries the distribution of the epsilons the round's
    devices stated (``epsilon_min``, ``epsilon_median``, ``epsilon_max``), how
    many said their budget is spent (``budget_exhausted``) and ``epsilon``: the
    largest epsilon any device has reported so far, i.e. the guarantee every
    device of the run enjoys.
    """

    unit = "rating"

    def __init__(self, plan: RatingLevelPlan) -> None:
        self.plan = plan
        self.max_epsilon = 0.0
        self.all_exhausted = False

    def allows_next_round(self) -> bool:
        """False after a round in which every device that replied was out of budget."""
        return not self.all_exhausted

    def report(self, device_metrics: Sequence[Mapping[str, float]]) -> dict[str, Any]:
        summary = spent_budget_summary(device_metrics)
        if summary["epsilon_max"] is not None:
            self.max_epsilon = max(self.max_epsilon, float(summary["epsilon_max"]))
        replies = [m for m in device_metrics if wire.MET_BUDGET_EXHAUSTED in m]
        self.all_exhausted = bool(replies) and all(m[wire.MET_BUDGET_EXHAUSTED] >= 1 for m in replies)
        if self.all_exhausted:
            log.warning("every device that replied has spent its budget dp.epsilon=%s", self.plan.epsilon)
        return {ROW_EPSILON: self.max_epsilon, ROW_DELTA: self.plan.delta, ROW_UNIT: self.unit,
                ROW_ACCOUNTANT: self.plan.accountant, **summary}

    def state_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "max_epsilon": self.max_epsilon, "all_exhausted": self.all_exhausted}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.max_epsilon = float(state.get("max_epsilon", 0.0))
        self.all_exhausted = bool(state.get("all_exhausted", False))


class UserLevelPolicy(ServerPolicy):
    """User-level DP: Poisson cohorts, Gaussian noise on the sum, accounting and a budget stop.

    Parameters
    ----------
    plan
        The run's user-level parameters (``sigma``, ``S``, ``q``, ``t_min``).
    population
        ``N``: the number of devices; ``q N`` is the fedavg divisor.
    """

    unit = "user"

    def __init__(self, plan: UserLevelPlan, *, population: int) -> None:
        if population < 1:
            raise ConfigError(f"population: need at least one device, got {population}")
        self.plan = plan
        self.population = int(population)
        self.accountant = PrivacyAccountant(plan.accountant, delta=plan.delta, unit="user")

    @property
    def expected_clients(self) -> float:
        return self.plan.expected_clients(self.population)

    def cohort(self, nodes: Sequence[int], size: int, rng: np.random.Generator) -> list[int]:
        """Each node independently with probability ``q`` (what amplification by sampling assumes)."""
        return sample_cohort(nodes, size, rng, poisson_rate=self.plan.sample_rate)

    def allows_next_round(self) -> bool:
        """False when one more round at ``(sigma, q)`` would exceed ``dp.epsilon``."""
        exceed = self.accountant.would_exceed(epsilon_budget=self.plan.epsilon_budget,
                                              noise_multiplier=self.plan.noise_multiplier,
                                              sample_rate=self.plan.sample_rate, steps=1)
        if exceed:
            log.warning("user-level budget: one more round would exceed dp.epsilon=%s (spent %.4g)",
                        self.plan.epsilon, self.accountant.epsilon())
        return not exceed

    def finish_round(self, sums: RoundSums, rng: np.random.Generator) -> tuple[RoundSums, float | None]:
        """Add the round's server-side noise, drop the counts, step the accountant.

        Central noise: ``N(0, (sigma S)^2)`` on every coordinate of the summed
        item factors and biases. Distributed noise: the devices added
        ``(sigma S)^2 / t_min`` each, so the server adds only what ``s <
        t_min`` survivors left missing, ``(t_min - s) / t_min * (sigma S)^2``
        (nothing with ``t_min`` or more). The round counts as one mechanism
        invocation and its noisy sum is applied even when nobody survived:
        the released model is the mechanism's output, and skipping a round
        would reveal that the cohort was empty.
        """
        std = self.server_noise_std(sums.n_clients)
        q = sums.item_factors + gaussian_noise(sums.item_factors.shape, std=std, rng=rng, dtype=np.float64,
                                               secure=self.plan.secure_mode)
        b = sums.item_bias + gaussian_noise(sums.item_bias.shape, std=std, rng=rng, dtype=np.float64,
                                            secure=self.plan.secure_mode)
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
        return RoundSums(q, b, np.zeros_like(sums.counts), sums.n_clients), self.expected_clients

    def server_noise_std(self, survivors: int) -> float:
        """Standard deviation the server adds to each summed coordinate."""
        full = self.plan.central_noise_std
        if self.plan.noise == "central":
            return full
        t_min = self.plan.min_survivors
        if t_min is None:
            raise ConfigError("dp.min-survivors: distributed noise without a resolved t_min")
        missing = max(0, t_min - survivors)
        return full * math.sqrt(missing / t_min)

    def report(self, device_metrics: Sequence[Mapping[str, float]]) -> dict[str, Any]:
        return {ROW_EPSILON: self.accountant.epsilon(), ROW_DELTA: self.plan.delta, ROW_UNIT: self.unit,
                ROW_ACCOUNTANT: self.plan.accountant, "noise_multiplier": self.plan.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "expected_clients": self.expected_clients}

    def state_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "accountant": self.accountant.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "accountant" in state:
            self.accountant.load_state_dict(state["accountant"])


def server_policy(plan: PrivacyPlan | None, *, population: int) -> ServerPolicy:
    """The policy of ``plan`` for ``population`` devices (checked before round 1).

    Raises
    ------
    ConfigError
        When the plan cannot work for this population (see :func:`check_population`).
    """
    plan = plan or OFF
    check_population(plan, population)
    if plan.user is not None:
        return UserLevelPolicy(plan.user, population=population)
    if plan.rating is not None:
        return RatingLevelPolicy(plan.rating)
    return ServerPolicy()


def spent_budget_summary(device_metrics: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Distribution of the epsilons devices reported in a round, and how many are exhausted."""
    eps = [float(m[wire.MET_EPSILON]) for m in device_metrics if wire.MET_EPSILON in m]
    exhausted = sum(1 for m in device_metrics if m.get(wire.MET_BUDGET_EXHAUSTED, 0.0) >= 1)
    if not eps:
        return {"epsilon_min": None, "epsilon_median": None, "epsilon_max": None, "budget_exhausted": exhausted}
    return {"epsilon_min": min(eps), "epsilon_median": statistics.median(eps), "epsilon_max": max(eps),
            "budget_exhausted": exhausted}
