"""The server's side of a federated run, independent of any transport: round settings, cohorts, the table.

The Flower ServerApp (``server/loop.py``) and the in-process reference loop
(:func:`fedrec.federated.reference.train_in_process`) both keep a
:class:`ServerState` and feed it each round's sums through the privacy policy
(:mod:`fedrec.federated.policy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec import flatconfig as fc
from fedrec.errors import ConfigError
from fedrec.model.mf import MFConfig, missing_weights
from fedrec.model.params import GlobalParams
from fedrec.train.aggregate import (
    AVERAGINGS,
    RoundSums,
    ServerOptConfig,
    ServerOptimizer,
    pseudo_gradient,
    wrmf_direction,
)
from fedrec.train.local import LocalConfig


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
    eval_cohort: float = 1000.0

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

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> FedConfig:
        """The round keys of a resolved flat configuration, with its ``local.*`` and server-optimizer sections."""
        return cls(rounds=fc.integer(flat, "rounds", low=1), cohort=fc.positive(flat, "cohort"),
                   local=LocalConfig.from_run_config(flat), server=ServerOptConfig.from_run_config(flat),
                   averaging=fc.get(flat, "strategy.averaging", str), eval_every=fc.integer(flat, "eval-every", low=1),
                   seed=fc.integer(flat, "seed", low=0), eval_cohort=_eval_cohort(flat["eval-cohort"]))

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


def _eval_cohort(value: Any) -> float:
    """``eval-cohort``: ``all`` (= 1.0, every device), a fraction in (0, 1] or a device count."""
    if value == "all":
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"eval-cohort: 'all', a fraction in (0, 1] or a device count, got {value!r}")
    return float(value)


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
    wrmf_reg: float | None = None
    """Set for ``model.loss = "wrmf"``: the item step is :func:`wrmf_direction` with this ``reg``."""
    wrmf_pop_exponent: float = 0.0
    """``"wrmf"``'s ``model.pop-exponent``: when not 0, every round's summed ``counts`` (one per device
    that touched an item) set the table's :attr:`GlobalParams.missing_weight` for the next round."""

    @classmethod
    def start(cls, n_items: int, model: MFConfig, fed: FedConfig, *, global_mean: float) -> ServerState:
        """Round 0 of a run over ``n_items`` items; ``global_mean`` is ``mu`` (:func:`prior_mean` in a run)."""
        glob = GlobalParams.init(n_items, model.dim, init_std=model.init_std, global_mean=global_mean,
                                 seed=fed.seed)
        state = cls(glob, ServerOptimizer(fed.server), fed.averaging, 0, np.random.default_rng(fed.seed))
        state.set_model(model)
        return state

    def set_model(self, model: MFConfig) -> None:
        """The model-specific item step (``"wrmf"``); also after a checkpoint, which holds only arrays."""
        wrmf = model.kind == "implicit" and model.loss == "wrmf"
        self.wrmf_reg = model.reg if wrmf else None
        self.wrmf_pop_exponent = model.pop_exponent if wrmf else 0.0

    def apply(self, sums: RoundSums, *, expected_clients: float | None = None) -> GlobalParams:
        """Move the table by one round's sums and count the round.

        A round nobody survived leaves the table as it is, unless the divisor is
        the expected cohort: under user-level DP the noisy sum is the released
        output whatever the cohort was.
        """
        if self.wrmf_reg is not None:
            if sums.n_clients > 0 or expected_clients is not None:
                dq = wrmf_direction(self.glob, sums, reg=self.wrmf_reg)
                self.glob = self.optimizer.apply(self.glob, dq, np.zeros_like(self.glob.item_bias))
                if self.wrmf_pop_exponent != 0:
                    missing = missing_weights(sums.counts, self.wrmf_pop_exponent).astype(np.float32)
                    self.glob = self.glob.replace(missing_weight=missing)
        elif sums.n_clients > 0 or expected_clients is not None:
            dq, db = pseudo_gradient(sums, averaging=self.averaging,  # type: ignore[arg-type]  # str checked by FedConfig
                                     expected_clients=expected_clients)
            self.glob = self.optimizer.apply(self.glob, dq, db)
        self.round += 1
        return self.glob


def prior_mean(kind: str, scale: tuple[float, float] | None) -> float:
    """The public prior ``mu`` of a run: the middle of the rating scale (0 for implicit data).

    The one place ``mu`` is computed. Federated runs use it instead of the data
    mean, which would have to be computed from the devices' ratings; biases
    absorb the difference (on ML-100K the midpoint is no worse than the true
    mean). The server puts it in every downlink, so a device never derives it.
    """
    if kind != "explicit" or scale is None:
        return 0.0
    return (scale[0] + scale[1]) / 2.0
