"""Noise calibration and the local sampling schedule of rating-level DP-SGD.

The search for a noise multiplier is Opacus's
(``opacus.accountants.utils.get_noise_multiplier``); this module fixes the
conventions around it (``inf`` epsilon means no noise, errors are
:class:`~fedrec.errors.PrivacyError`) and derives the sampling rate and step
count a device uses, so calibration and training agree on them.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

from opacus.accountants.utils import get_noise_multiplier

from fedrec.errors import PrivacyError
from fedrec.privacy.accounting import validate_step

logger = logging.getLogger(__name__)


def noise_multiplier_for(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) meeting ``(epsilon, delta)``.

    Opacus's binary search returns the upper end of its bracket, so the
    epsilon reached with the result is at most ``epsilon``.

    Parameters
    ----------
    epsilon
        Target epsilon for all ``steps``; ``math.inf`` returns 0 (no noise).
    delta
        Target delta in ``(0, 1)``.
    sample_rate
        Poisson sampling rate of each step, in ``(0, 1]``.
    steps
        Number of mechanism invocations the budget must cover.
    accountant
        Opacus accountant name.
    epsilon_tolerance
        Precision of the search in epsilon.

    Raises
    ------
    PrivacyError
        For invalid arguments or when no noise multiplier up to Opacus's limit
        reaches the target.
    """
    if not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon <= 0:
        raise PrivacyError(f"epsilon must be > 0 (inf allowed), got {epsilon!r}")
    if not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    validate_step(noise_multiplier=0.0, sample_rate=sample_rate, steps=steps)
    if math.isinf(epsilon) or steps == 0:
        return 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = get_noise_multiplier(
                target_epsilon=float(epsilon),
                target_delta=float(delta),
                sample_rate=float(sample_rate),
                steps=int(steps),
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
    except ValueError as exc:
        raise PrivacyError(
            f"cannot reach epsilon={epsilon} at delta={delta} with sample_rate={sample_rate} "
            f"over {steps} steps ({accountant}): {exc}"
        ) from exc
    logger.debug(
        "noise multiplier %.4f for eps=%s delta=%s q=%s steps=%d (%s)",
        sigma, epsilon, delta, sample_rate, steps, accountant,
    )
    return float(sigma)


@dataclass(frozen=True)
class LocalSchedule:
    """How a device runs DP-SGD over its own ratings in one round.

    Attributes
    ----------
    n_ratings
        Ratings on the device (the DP dataset size).
    sample_rate
        Poisson rate ``q = min(1, batch_size / n_ratings)``.
    expected_batch_size
        ``q * n_ratings``: the divisor of the noisy gradient sum.
    steps_per_epoch
        ``max(1, round(1 / q))`` so an epoch sees each rating once in expectation.
    steps
        ``epochs * steps_per_epoch``: optimizer steps, and accountant steps, per round.
    """

    n_ratings: int
    sample_rate: float
    expected_batch_size: float
    steps_per_epoch: int
    steps: int


def local_schedule(*, n_ratings: int, batch_size: int, epochs: int) -> LocalSchedule:
    """Sampling rate and step count of one local round.

    The schedule depends on ``n_ratings``; rating-level accounting treats that
    count as public (as Opacus does when it derives the rate from the dataset
    length).

    Raises
    ------
    PrivacyError
        When a count is not a positive integer (``epochs`` may be 0).
    """
    for name, value, low in (("n_ratings", n_ratings, 1), ("batch_size", batch_size, 1),
                             ("epochs", epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PrivacyError(f"{name} must be an integer >= {low}, got {value!r}")
    if batch_size >= n_ratings:
        q, expected = 1.0, float(n_ratings)
    else:
        q, expected = batch_size / n_ratings, float(batch_size)
    per_epoch = max(1, round(1.0 / q))
    return LocalSchedule(
        n_ratings=n_ratings,
        sample_rate=q,
        expected_batch_size=expected,
        steps_per_epoch=per_epoch,
        steps=epochs * per_epoch,
    )


def rating_level_noise_multiplier(
    *,
    epsilon: float,
    delta: float,
    n_ratings: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    accountant: str = "rdp",
) -> float:
    """Noise multiplier so a device taking part in ``rounds`` rounds spends ``epsilon``.

    Each round runs :func:`local_schedule`; the rounds compose, so the budget
    covers ``rounds * steps`` invocations at the device's sampling rate.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be an integer >= 1, got {rounds!r}")
    schedule = local_schedule(n_ratings=n_ratings, batch_size=batch_size, epochs=epochs)
    return noise_multiplier_for(
        epsilon=epsilon,
        delta=delta,
        sample_rate=schedule.sample_rate,
        steps=rounds * schedule.steps,
        accountant=accountant,
    )
