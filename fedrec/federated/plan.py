"""The public differential-privacy parameters of a run, derived once from its configuration.

Devices and server must agree on every number the guarantee rests on: the
noise multiplier, the clip bound, the sampling rate, the number of rounds the
budget covers and, for distributed noise, the fewest devices ``t_min`` whose
noisy updates are ever summed. Both sides build a :class:`PrivacyPlan` from the
same run configuration (:meth:`fedrec.runconfig.RunConfig.privacy_plan`, which
calls :func:`build_plan`), so they cannot disagree.

Rating-level DP (``dp.unit = rating``)
    Each device runs DP-SGD (:func:`~fedrec.privacy.local_dp.dp_local_train`)
    over its own ratings and keeps its own accountant. With ``dp.epsilon`` the
    device calibrates its noise multiplier for its rating count and for
    ``rounds`` participations: the worst case, a device sampled in every round,
    so a device never runs out of budget before the run ends (with ``cohort < 1``
    it is therefore noisier than it needs to be on average; set
    ``dp.noise-multiplier`` to trade that off, the per-device budget check then
    stops a device at ``dp.epsilon`` if one is reachable).

User-level DP (``dp.unit = user``)
    Each device clips its whole update to ``dp.clip``; the server samples a
    Poisson cohort with rate ``q = dp.cohort-rate`` and one Gaussian mechanism
    with noise multiplier ``sigma`` runs per round, so ``sigma`` is calibrated
    with ``noise_multiplier_for(epsilon, delta, sample_rate=q, steps=rounds)``.
    Distributed noise divides the variance over ``t_min`` devices
    (:meth:`fedrec.runconfig.RunConfig.for_population`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from functools import lru_cache

from fedrec.errors import ConfigError
from fedrec.privacy.calibration import noise_multiplier_for, rating_level_noise_multiplier
from fedrec.privacy.config import DPConfig

log = logging.getLogger(__name__)

LOCAL_EPOCHS_KEY = "dp.local-epochs"
BATCH_SIZE_KEY = "dp.batch-size"
MIN_SURVIVORS_KEY = "dp.min-survivors"
#: Run-config keys of the plan that :class:`DPConfig` does not hold.
PLAN_KEYS: tuple[str, ...] = (LOCAL_EPOCHS_KEY, BATCH_SIZE_KEY, MIN_SURVIVORS_KEY)

#: Rating-level DP-SGD defaults when ``dp.local-epochs`` / ``dp.batch-size`` are absent. A
#: small expected batch makes the DP-SGD divisor ``min(batch, n)`` the same for almost every
#: device, so every rating moves the table equally and every device adds about the same noise
#: in total (a device with ``n`` ratings calibrates ``sigma ~ 1/sqrt(n)`` for ``n/batch`` steps);
#: a batch covering all of a device's ratings divides by ``n`` instead and lets the devices with
#: the fewest ratings dominate the summed noise.
DEFAULT_LOCAL_EPOCHS = 1
DEFAULT_BATCH_SIZE = 4


@dataclass(frozen=True)
class RatingLevelPlan:
    """What every device needs to run rating-level DP-SGD.

    Attributes
    ----------
    lr, epochs, batch_size
        Plain-SGD learning rate (``local.lr``), local epochs and expected
        Poisson batch size of one round's DP-SGD.
    clip
        Per-rating gradient clip bound ``C``.
    delta
        Delta of the per-device guarantee.
    epsilon
        Per-device budget, or None when the noise multiplier is fixed.
    noise_multiplier
        Fixed noise multiplier, or None to calibrate it per device.
    planned_rounds
        Participations the calibration covers (every round of the run).
    accountant, secure_mode
        Opacus accountant and secure-mode flag.
    """

    lr: float
    epochs: int
    batch_size: int
    clip: float
    delta: float
    epsilon: float | None
    noise_multiplier: float | None
    planned_rounds: int
    accountant: str
    secure_mode: bool

    @property
    def epsilon_budget(self) -> float:
        """The cap a device enforces before each round (``inf`` when none is set)."""
        return math.inf if self.epsilon is None else float(self.epsilon)

    def noise_multiplier_for(self, n_ratings: int) -> float:
        """Noise multiplier of a device holding ``n_ratings`` ratings.

        The fixed ``dp.noise-multiplier``, or the one calibrated so that
        ``planned_rounds`` rounds of this device's schedule (sampling rate
        ``batch_size / n_ratings``) spend ``epsilon`` (within 0.01, never
        more; :func:`~fedrec.privacy.calibration.noise_multiplier_for`). Either way the device's
        accountant records its real history and refuses a round beyond the
        budget.
        """
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        assert self.epsilon is not None
        return _rating_noise_multiplier(
            epsilon=float(self.epsilon), delta=self.delta, n_ratings=int(n_ratings),
            batch_size=self.batch_size, epochs=self.epochs, rounds=self.planned_rounds,
            accountant=self.accountant,
        )


@dataclass(frozen=True)
class UserLevelPlan:
    """User-level DP of a run: clip, noise multiplier, Poisson rate, accounting.

    Attributes
    ----------
    clip
        L2 bound ``S`` of a device's whole update.
    noise_multiplier
        ``sigma``: the summed update carries ``N(0, (sigma S)^2)`` per coordinate.
    noise
        ``"central"`` or ``"distributed"``.
    sample_rate
        Poisson cohort rate ``q``.
    delta, epsilon
        Target delta; budget (None when ``sigma`` is fixed).
    rounds
        Rounds the calibration covers.
    accountant, secure_mode
        Opacus accountant; secure-mode noise.
    min_survivors
        ``t_min`` of distributed noise, None until resolved (or for central noise).
    """

    clip: float
    noise_multiplier: float
    noise: str
    sample_rate: float
    delta: float
    epsilon: float | None
    rounds: int
    accountant: str
    secure_mode: bool
    min_survivors: int | None = None

    @property
    def epsilon_budget(self) -> float:
        """The cap of the run (``inf`` when none is set)."""
        return math.inf if self.epsilon is None else float(self.epsilon)

    @property
    def central_noise_std(self) -> float:
        """``sigma * S``: the noise the summed update must carry."""
        return self.noise_multiplier * self.clip

    def device_noise_std(self) -> float:
        """Noise a device adds to its clipped update: ``sigma S / sqrt(t_min)`` or 0.

        Raises
        ------
        ConfigError
            For distributed noise whose ``t_min`` was never resolved: a device
            must not guess it (too large a guess removes the privacy).
        """
        if self.noise != "distributed":
            return 0.0
        if self.min_survivors is None:
            raise ConfigError(f"{MIN_SURVIVORS_KEY}: distributed noise needs t_min; the server resolves it "
                              "from the population and forwards it to the devices")
        return self.central_noise_std / math.sqrt(self.min_survivors)

    def expected_clients(self, population: int) -> float:
        """``q N``: the fedavg divisor, fixed so one device moves the average by at most ``S / (q N)``."""
        return self.sample_rate * population


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP parameters of a run: which unit, and that unit's plan."""

    unit: str = "off"
    rating: RatingLevelPlan | None = None
    user: UserLevelPlan | None = None

    @property
    def enabled(self) -> bool:
        return self.unit != "off"

    @property
    def delta(self) -> float | None:
        part = self.rating or self.user
        return None if part is None else part.delta

    @property
    def accountant(self) -> str | None:
        part = self.rating or self.user
        return None if part is None else part.accountant


OFF = PrivacyPlan()


@lru_cache(maxsize=64)
def build_plan(dp: DPConfig, *, rounds: int, lr: float, local_epochs: int | None = None,
               batch_size: int | None = None, min_survivors: int | None = None) -> PrivacyPlan:
    """The plan from its parts (cached: calibration runs once per process and setting).

    :meth:`fedrec.runconfig.RunConfig.privacy_plan` reads the parts from a run
    configuration, so server and devices build the same plan from the same
    downlink.

    Raises
    ------
    PrivacyError
        When no noise multiplier reaches ``dp.epsilon`` (Opacus gives up).
    """
    if not dp.enabled:
        return OFF
    if dp.unit == "rating":
        return PrivacyPlan("rating", rating=RatingLevelPlan(
            lr=float(lr), epochs=DEFAULT_LOCAL_EPOCHS if local_epochs is None else int(local_epochs),
            batch_size=DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size), clip=dp.clip,
            delta=dp.delta, epsilon=dp.epsilon, noise_multiplier=dp.noise_multiplier,
            planned_rounds=int(rounds), accountant=dp.accountant, secure_mode=dp.secure_mode))
    if dp.noise_multiplier is not None:
        sigma = float(dp.noise_multiplier)
    else:
        assert dp.epsilon is not None
        sigma = _user_noise_multiplier(float(dp.epsilon), dp.delta, dp.cohort_rate, int(rounds), dp.accountant)
    return PrivacyPlan("user", user=UserLevelPlan(
        clip=dp.clip, noise_multiplier=sigma, noise=dp.noise, sample_rate=dp.cohort_rate, delta=dp.delta,
        epsilon=dp.epsilon, rounds=int(rounds), accountant=dp.accountant, secure_mode=dp.secure_mode,
        min_survivors=min_survivors if dp.noise == "distributed" else None))


def with_min_survivors(plan: PrivacyPlan, min_survivors: int) -> PrivacyPlan:
    """The plan with ``t_min`` set (what the SecAgg path uses once it knows its threshold)."""
    if plan.user is None or plan.user.noise != "distributed":
        return plan
    return replace(plan, user=replace(plan.user, min_survivors=int(min_survivors)))


def check_population(plan: PrivacyPlan, population: int) -> None:
    """Refuse a plan that cannot work for ``population`` devices (before round 1).

    Raises
    ------
    ConfigError
        When the expected user-level cohort ``q N`` is below one device, or
        ``t_min`` exceeds the expected cohort (most rounds would then carry
        less noise than the guarantee needs from the devices).
    """
    user = plan.user
    if user is None:
        return
    expected = user.sample_rate * population
    if expected < 1:
        raise ConfigError(f"dp.cohort-rate: the expected cohort q*N = {user.sample_rate} * {population} = "
                          f"{expected:.3g} is below one device")
    if user.noise == "distributed":
        t_min = user.min_survivors
        if t_min is None or t_min < 1:
            raise ConfigError(f"{MIN_SURVIVORS_KEY}: distributed noise needs t_min >= 1, got {t_min}")
        if t_min > max(1, math.floor(expected)):
            raise ConfigError(f"{MIN_SURVIVORS_KEY}: t_min = {t_min} exceeds the expected cohort q*N = "
                              f"{expected:.3g}; most rounds would sum fewer noisy updates than t_min")
    if user.delta > 1.0 / population:
        log.warning("dp.delta = %g is above 1/N = %g: a guarantee that may fail for one user in N",
                    user.delta, 1.0 / population)


# --------------------------------------------------------------------------- calibration


@lru_cache(maxsize=256)
def _user_noise_multiplier(epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str) -> float:
    sigma = noise_multiplier_for(epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=rounds,
                                 accountant=accountant)
    log.info("user-level noise multiplier %.4f for epsilon=%g delta=%g q=%g over %d rounds (%s)",
             sigma, epsilon, delta, sample_rate, rounds, accountant)
    return sigma


@lru_cache(maxsize=4096)
def _rating_noise_multiplier(*, epsilon: float, delta: float, n_ratings: int, batch_size: int, epochs: int,
                             rounds: int, accountant: str) -> float:
    return rating_level_noise_multiplier(epsilon=epsilon, delta=delta, n_ratings=n_ratings,
                                         batch_size=batch_size, epochs=epochs, rounds=rounds,
                                         accountant=accountant)
