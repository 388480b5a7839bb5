"""Noise calibration (one calibrator) and the local sampling schedule of rating-level DP-SGD.

:func:`noise_multiplier_for` solves Opacus's calibration contract (the epsilon
reached is within the tolerance below the target, never above), with the
conventions fedrec needs (``inf`` epsilon means no noise, errors are
:class:`~fedrec.errors.PrivacyError`); :func:`local_schedule` derives the
sampling rate and step count a device uses, so calibration and training agree
on them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

from fedrec.errors import PrivacyError
from fedrec.privacy.accounting import epsilon_of, validate_step

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
    """The noise multiplier whose epsilon, by the Opacus accountant, is in ``[epsilon - tolerance, epsilon]``.

    fedrec's one noise calibrator (user-level rounds and every rating-level
    device use it). The contract is Opacus's
    (``opacus.accountants.utils.get_noise_multiplier``), reached with a few
    accountant evaluations instead of a dozen: a safeguarded regula falsi on
    ``log epsilon`` against ``log sigma`` (nearly a straight line), started
    from the nearest calibration already solved, scaled by ``q sqrt(steps)``.
    Rating-level devices each calibrate for their own rating count, so on a
    large population this is what keeps the first round from being dominated
    by calibration.

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
        For invalid arguments or when no noise multiplier up to ``2**20``
        reaches the target.
    """
    if not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon <= 0:
        raise PrivacyError(f"epsilon must be > 0 (inf allowed), got {epsilon!r}")
    if not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    validate_step(noise_multiplier=0.0, sample_rate=sample_rate, steps=steps)
    if math.isinf(epsilon) or steps == 0:
        return 0.0
    sigma = _calibrate(float(epsilon), float(delta), float(sample_rate), int(steps), accountant,
                       float(epsilon_tolerance))
    logger.debug("noise multiplier %.4f for eps=%s delta=%s q=%s steps=%d (%s)",
                 sigma, epsilon, delta, sample_rate, steps, accountant)
    return sigma


#: Solved calibrations per (epsilon, delta, accountant): (q * sqrt(steps), sigma), the starting guesses.
_SOLVED: dict[tuple[float, float, str], list[tuple[float, float]]] = {}


@lru_cache(maxsize=8192)
def _calibrate(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
               tolerance: float) -> float:
    def eps_of(sigma: float) -> float:
        return epsilon_of(accountant, ((sigma, sample_rate, steps),), delta)

    scale = sample_rate * math.sqrt(steps)
    solved = _SOLVED.setdefault((epsilon, delta, accountant), [])
    if solved:
        near_scale, near_sigma = min(solved, key=lambda p: abs(math.log(p[0] / scale)))
        sigma = near_sigma * scale / near_scale
    else:
        sigma = max(0.3, scale * math.sqrt(2 * math.log(1.25 / delta)) / epsilon)
    lo: tuple[float, float] | None = None  # (sigma, eps) with eps > target
    hi: tuple[float, float] | None = None  # (sigma, eps) with eps <= target
    for _ in range(100):
        value = eps_of(sigma)
        if value <= epsilon:
            hi = (sigma, value)
            if epsilon - value <= tolerance:
                break
        else:
            lo = (sigma, value)
        if lo is not None and hi is not None:
            sigma = _interpolate(lo, hi, epsilon)
        elif not math.isfinite(value) or value <= 0:
            sigma = sigma * 2.0 if hi is None else sigma / 2.0
        else:
            # epsilon is close to proportional to 1/sigma: aim just past the target to get a bracket
            aim = epsilon - tolerance / 2 if hi is None else epsilon - tolerance / 4
            sigma *= (value / aim) * (1.002 if hi is None else 0.998)
        if sigma > 2.0 ** 20:
            raise PrivacyError(f"cannot reach epsilon={epsilon} at delta={delta} with sample_rate="
                               f"{sample_rate} over {steps} steps ({accountant})")
    assert hi is not None
    solved.append((scale, hi[0]))
    return hi[0]


def _interpolate(lo: tuple[float, float], hi: tuple[float, float], target: float) -> float:
    """Next sigma inside ``(lo, hi)``: log-log secant, pulled into the middle 90% of the bracket."""
    (s_lo, e_lo), (s_hi, e_hi) = lo, hi
    if math.isfinite(e_lo) and e_hi > 0 and e_lo > e_hi:
        t = (math.log(e_lo) - math.log(target)) / (math.log(e_lo) - math.log(e_hi))
        guess = math.exp(math.log(s_lo) + t * (math.log(s_hi) - math.log(s_lo)))
    else:
        guess = math.sqrt(s_lo * s_hi)
    return min(max(guess, s_lo + 0.05 * (s_hi - s_lo)), s_hi - 0.05 * (s_hi - s_lo))


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
