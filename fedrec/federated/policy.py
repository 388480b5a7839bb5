"""Server-side privacy policy: who takes part, what noise the sum gets, when the run stops.

A policy sees only what the server sees: the node list and the summed update
of a round (devices state nothing else but ``ok``). It is pure (no transport):
the Flower ServerApp (``server/loop.py``) and the in-process reference loop
(:func:`fedrec.federated.reference.train_in_process`) call the same methods in the
same order, with the same random generator, so DP behaves identically in both:

    if not policy.allows_next_round(): stop
    cohort = policy.cohort(nodes, size, rng)
    ... devices train, the server sums the survivors' updates ...
    sums, expected = policy.finish_round(sums, rng)
    state.apply(sums, expected_clients=expected)
    row.update(policy.report(device_metrics))

* :class:`ServerPolicy` (``dp.unit = off``): fixed-size cohorts, nothing added.
* :class:`RatingLevelPolicy`: fixed-size cohorts; the noise is the devices'
  own (DP-SGD) on a public schedule, so the server reports the worst-case
  epsilon of that schedule; devices report nothing.
* :class:`UserLevelPolicy`: Poisson cohorts with rate ``q``, Gaussian noise
  on the sum (all of it centrally, or the shortfall below ``t_min`` survivors
  under distributed noise), fedavg over the expected cohort ``q N``, one
  accountant step per round and a stop before the round that would exceed
  ``dp.epsilon``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
    """Rating-level DP: the devices add the noise; the server reports the worst case of the public schedule.

    The devices send nothing about their budgets. Every device runs the same
    public schedule, so after ``r`` rounds no device can have spent more than
    :meth:`~fedrec.federated.plan.RatingLevelPlan.worst_case_epsilon` (a device
    sampled in every round, capped where its budget stops it): that is the
    ``epsilon`` of each round row, the guarantee every device of the run enjoys.
    """

    unit = "rating"

    def __init__(self, plan: RatingLevelPlan) -> None:
        self.plan = plan
        self.rounds = 0
        if plan.max_participations < plan.planned_rounds:
            log.warning("rating-level budget dp.epsilon=%s covers %d rounds per device; a device sampled more "
                        "often sends zeros from then on", plan.epsilon, plan.max_participations)

    def finish_round(self, sums: RoundSums, rng: np.random.Generator) -> tuple[RoundSums, float | None]:
        self.rounds += 1
        return sums, None

    def report(self, device_metrics: Sequence[Mapping[str, float]]) -> dict[str, Any]:
        plan = self.plan
        return {ROW_EPSILON: plan.worst_case_epsilon(self.rounds), ROW_DELTA: plan.delta, ROW_UNIT: self.unit,
                ROW_ACCOUNTANT: plan.accountant, "noise_multiplier": plan.noise_multiplier,
                "sample_rate": plan.sample_rate, "steps_per_round": plan.steps_per_round,
                "max_participations": plan.max_participations}

    def state_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "rounds": self.rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.rounds = int(state.get("rounds", 0))


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
        item factors, biases and the model's extra segments (``"wrmf"``), all
        of which the devices' joint clip covers. Distributed noise: the devices added
        ``(sigma S)^2 / t_min`` each, so the server adds only what ``s <
        t_min`` survivors left missing, ``(t_min - s) / t_min * (sigma S)^2``
        (nothing with ``t_min`` or more). The round counts as one mechanism
        invocation and its noisy sum is applied even when nobody survived:
        the released model is the mechanism's output, and skipping a round
        would reveal that the cohort was empty.
        """
        std = self.server_noise_std(sums.n_clients)
        q, b, *extra = (a + gaussian_noise(a.shape, std=std, rng=rng, dtype=np.float64, secure=self.plan.secure_mode)
                        for a in (sums.item_factors, sums.item_bias, *sums.extra.values()))
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
        return (RoundSums(q, b, np.zeros_like(sums.counts), sums.n_clients, dict(zip(sums.extra, extra, strict=True))),
                self.expected_clients)

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
