"""Calibration: Opacus's search, with inf meaning no noise and errors as PrivacyError."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedrec.errors import PrivacyError
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.privacy.calibration import (
    local_schedule,
    noise_multiplier_for,
    rating_level_noise_multiplier,
)

DELTA = 1e-5


def _epsilon(sigma: float, q: float, steps: int, kind: str = "rdp") -> float:
    acc = PrivacyAccountant(kind, delta=DELTA)
    acc.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    return acc.epsilon()


def test_infinite_epsilon_means_no_noise() -> None:
    assert noise_multiplier_for(epsilon=math.inf, delta=DELTA, sample_rate=0.1, steps=100) == 0.0


@pytest.mark.parametrize(("kind", "target"), [("rdp", 2.0), ("rdp", 8.0), ("prv", 3.0)])
def test_calibrated_sigma_reaches_target_from_below(kind: str, target: float) -> None:
    q, steps = 0.01, 500
    sigma = noise_multiplier_for(epsilon=target, delta=DELTA, sample_rate=q, steps=steps,
                                 accountant=kind)
    reached = _epsilon(sigma, q, steps, kind)
    assert target - 0.01 <= reached <= target


def test_more_budget_means_less_noise() -> None:
    kw: dict[str, Any] = {"delta": DELTA, "sample_rate": 0.01, "steps": 500}
    assert noise_multiplier_for(epsilon=8.0, **kw) < noise_multiplier_for(epsilon=1.0, **kw)


def test_unreachable_target_is_a_privacy_error() -> None:
    with pytest.raises(PrivacyError, match="cannot reach"):
        noise_multiplier_for(epsilon=1e-9, delta=DELTA, sample_rate=1.0, steps=1000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0, "delta": DELTA, "sample_rate": 0.1, "steps": 1},
        {"epsilon": math.nan, "delta": DELTA, "sample_rate": 0.1, "steps": 1},
        {"epsilon": 1.0, "delta": 1.0, "sample_rate": 0.1, "steps": 1},
        {"epsilon": 1.0, "delta": DELTA, "sample_rate": 0.0, "steps": 1},
        {"epsilon": 1.0, "delta": DELTA, "sample_rate": 0.1, "steps": -3},
    ],
)
def test_invalid_calibration_arguments(kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        noise_multiplier_for(**kwargs)


@pytest.mark.parametrize(
    ("n", "batch", "epochs", "q", "expected", "per_epoch"),
    [
        (200, 50, 5, 0.25, 50.0, 4),
        (150, 50, 1, 1 / 3, 50.0, 3),
        (230, 50, 2, 50 / 230, 50.0, 5),
        (30, 50, 3, 1.0, 30.0, 1),
    ],
)
def test_local_schedule(n: int, batch: int, epochs: int, q: float, expected: float,
                        per_epoch: int) -> None:
    s = local_schedule(n_ratings=n, batch_size=batch, epochs=epochs)
    assert s.sample_rate == pytest.approx(q)
    assert s.expected_batch_size == expected
    assert s.steps_per_epoch == per_epoch
    assert s.steps == epochs * per_epoch


def test_local_schedule_rejects_empty_device() -> None:
    with pytest.raises(PrivacyError, match="n_ratings"):
        local_schedule(n_ratings=0, batch_size=10, epochs=1)


def test_rating_level_noise_multiplier_covers_all_rounds() -> None:
    sigma = rating_level_noise_multiplier(epsilon=10.0, delta=DELTA, n_ratings=1000,
                                          batch_size=10, epochs=1, rounds=5)
    s = local_schedule(n_ratings=1000, batch_size=10, epochs=1)
    assert _epsilon(sigma, s.sample_rate, 5 * s.steps) <= 10.0
