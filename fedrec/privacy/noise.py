"""Gaussian noise for user-level DP: central and distributed.

*Central*: the server adds ``N(0, (sigma * S)^2)`` to the sum of clipped
updates (``S`` is the clip bound, the sensitivity of the sum to one user). It
must be trusted to do so and to not look at the individual updates.

*Distributed*: each of the ``n`` clients adds ``N(0, (sigma * S)^2 / t_min)``
to its own clipped update before secure aggregation, where ``t_min`` is the
SecAgg threshold. Independent Gaussians add their variances, so any sum over at
least ``t_min`` survivors carries at least ``(sigma * S)^2``, and the server
never sees a less-noisy value. Two caveats follow from the arithmetic: with
more survivors than ``t_min`` the sum is noisier than needed (privacy is not
lost, utility is), and a coalition of ``k`` clients knows its own shares, so
against it only ``(survivors - k) / t_min`` of the variance remains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedrec.errors import PrivacyError


def central_noise_std(*, noise_multiplier: float, clip: float) -> float:
    """Standard deviation the server adds to the sum: ``sigma * S``."""
    _check_nonneg("noise_multiplier", noise_multiplier)
    _check_positive("clip", clip)
    return float(noise_multiplier) * float(clip)


def distributed_noise_std(
    *, noise_multiplier: float, clip: float, min_survivors: int
) -> float:
    """Standard deviation each client adds: ``sigma * S / sqrt(t_min)``.

    Parameters
    ----------
    min_survivors
        The secure-aggregation threshold ``t_min``: the fewest clients whose
        sum the server can ever unmask.
    """
    if isinstance(min_survivors, bool) or not isinstance(min_survivors, int) or min_survivors < 1:
        raise PrivacyError(f"min_survivors must be an integer >= 1, got {min_survivors!r}")
    return central_noise_std(noise_multiplier=noise_multiplier, clip=clip) / math.sqrt(
        min_survivors
    )


def gaussian_noise(
    shape: int | tuple[int, ...],
    *,
    std: float,
    rng: np.random.Generator,
    dtype: type[np.floating] | np.dtype = np.float32,
    secure: bool = False,
) -> np.ndarray:
    """Draw ``N(0, std^2)`` noise of ``shape``.

    Parameters
    ----------
    std
        Standard deviation; 0 gives exact zeros (no noise, no privacy).
    rng
        The source of randomness, passed explicitly so runs are reproducible
        and so a deployment can choose its generator.
    secure
        Average ``4`` draws as ``sum / 2`` (same variance), the construction
        Opacus uses in ``secure_mode`` against floating-point attacks on the
        low bits of a single Gaussian sample. It does not make ``rng``
        cryptographically strong.
    """
    _check_nonneg("std", std)
    if std == 0:
        return np.zeros(shape, dtype=dtype)
    if not secure:
        return rng.normal(0.0, std, size=shape).astype(dtype, copy=False)
    total = np.zeros(shape, dtype=np.float64)
    for _ in range(4):
        total += rng.normal(0.0, std, size=shape)
    return (total / 2.0).astype(dtype, copy=False)


def add_noise(
    arrays: Sequence[np.ndarray],
    *,
    std: float,
    rng: np.random.Generator,
    secure: bool = False,
) -> list[np.ndarray]:
    """Return ``arrays`` each plus independent ``N(0, std^2)`` noise, dtypes kept.

    Raises
    ------
    PrivacyError
        For a non-floating array, whose dtype would round the noise away.
    """
    out = []
    for a in arrays:
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            raise PrivacyError(f"cannot add noise to a {a.dtype} array; use a floating dtype")
        noise = gaussian_noise(a.shape, std=std, rng=rng, dtype=np.float64, secure=secure)
        out.append((a.astype(np.float64) + noise).astype(a.dtype, copy=False))
    return out


def _check_nonneg(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise PrivacyError(f"{name} must be finite and >= 0, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    _check_nonneg(name, value)
    if value == 0:
        raise PrivacyError(f"{name} must be > 0, got {value!r}")
