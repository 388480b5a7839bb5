"""Server side of differential privacy: a thin adapter over :mod:`fedrec.privacy.server`.

The round loop asks this object for the cohort, whether another round fits the
budget, the privatised sums, the privacy fields of each round row and the
state to checkpoint. All policy math (Poisson cohorts, central noise,
accounting, the budget stop, the spent-budget distribution) lives in the pure
module so the reference loop runs exactly the same code.

``cfg`` is the run configuration the devices must receive: with distributed
user-level noise it carries the resolved ``dp.min-survivors`` (``t_min``),
which a device cannot work out on its own because it does not know the
population.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedrec.errors import ConfigError
from fedrec.privacy.plan import MIN_SURVIVORS_KEY, privacy_plan, resolve_min_survivors
from fedrec.privacy.server import ServerPolicy, server_policy
from fedrec.runconfig import RunConfig
from fedrec.train.aggregate import RoundSums

log = logging.getLogger(__name__)


class ServerPrivacy:
    """The privacy policy of ``dp.unit`` for a run over ``population`` devices.

    Parameters
    ----------
    cfg
        The resolved run configuration.
    population
        Number of devices ``N`` (connected nodes); ``None`` is only valid
        without user-level DP (used before the population is known).
    """

    def __init__(self, cfg: RunConfig, *, population: int | None = None) -> None:
        t_min = resolve_min_survivors(cfg, population) if population is not None else None
        if t_min is not None and cfg.flat.get(MIN_SURVIVORS_KEY) is None:
            cfg = RunConfig.from_flat({**cfg.flat, MIN_SURVIVORS_KEY: t_min})
            log.info("distributed noise: t_min = %d devices per round", t_min)
        self.cfg = cfg
        self.plan = privacy_plan(cfg)
        if population is None:
            if self.plan.user is not None:
                raise ConfigError("dp.unit: user-level DP needs the population (number of devices)")
            population = 1
        self.policy: ServerPolicy = server_policy(self.plan, population=population)

    def cohort(self, nodes: list[int], size: int, rng: np.random.Generator) -> list[int]:
        return self.policy.cohort(nodes, size, rng)

    def allows_next_round(self) -> bool:
        return self.policy.allows_next_round()

    def finish_round(self, sums: RoundSums, rng: np.random.Generator) -> tuple[RoundSums, float | None]:
        """Privatise the round's sums; returns them and the expected cohort size for averaging."""
        return self.policy.finish_round(sums, rng)

    def report(self, replies_metrics: list[dict[str, float]]) -> dict[str, Any]:
        return self.policy.report(replies_metrics)

    def state(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)


def make_server_privacy(cfg: RunConfig, population: int | None = None) -> ServerPrivacy:
    """The privacy policy of ``dp.unit`` for ``population`` connected devices."""
    return ServerPrivacy(cfg, population=population)
