"""Rating-level DP local training: dense noisy deltas, persistent accounting."""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedrec.errors import ConfigError, DataError, ModelError, PrivacyError
from fedrec.privacy import local_dp
from fedrec.privacy.calibration import local_schedule
from fedrec.privacy.local_dp import (
    DPLocalResult,
    dp_local_train,
    local_train,
    untouched_row_noise_std,
)

DELTA = 1e-5


def _device(n_items: int = 500, dim: int = 8, n_ratings: int = 60, seed: int = 0,
            distinct: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    if distinct:
        items = rng.choice(n_items, size=n_ratings, replace=False)
    else:
        items = rng.integers(0, n_items, size=n_ratings)
    return {
        "item_factors": (0.1 * rng.standard_normal((n_items, dim))).astype(np.float32),
        "item_bias": (0.1 * rng.standard_normal(n_items)).astype(np.float32),
        "global_mean": 3.5,
        "user_factor": (0.1 * rng.standard_normal(dim)).astype(np.float32),
        "user_bias": 0.1,
        "items": items.astype(np.int64),
        "ratings": rng.integers(1, 6, size=n_ratings).astype(np.float32),
    }


HYPER: dict[str, Any] = {"lr": 0.05, "epochs": 2, "batch_size": 15, "reg": 0.01}


def _dp(device: dict[str, Any], **overrides: Any) -> DPLocalResult:
    kwargs: dict[str, Any] = {**HYPER, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                              "delta": DELTA, "accountant_state": None, "seed": 0}
    kwargs.update(overrides)
    return dp_local_train(**device, **kwargs)


def _touched(device: dict[str, Any]) -> np.ndarray:
    mask = np.zeros(len(device["item_bias"]), dtype=bool)
    mask[device["items"]] = True
    return mask


# --------------------------------------------------------------------------- dense deltas


def test_deltas_are_dense_and_every_row_is_noisy() -> None:
    device = _device()
    res = _dp(device)
    n_items, dim = device["item_factors"].shape
    assert res.delta_item_factors.shape == (n_items, dim)
    assert res.delta_item_factors.dtype == np.float32
    assert res.delta_item_bias.shape == (n_items,)
    assert res.delta_item_bias.dtype == np.float32
    assert np.all(np.any(res.delta_item_factors != 0, axis=1))
    assert np.all(res.delta_item_bias != 0)
    assert res.user_factor.shape == (dim,) and res.user_factor.dtype == np.float32
    assert not res.budget_exhausted
    assert res.steps == local_schedule(n_ratings=60, batch_size=15, epochs=2).steps


def test_without_noise_untouched_rows_are_exactly_zero() -> None:
    device = _device()
    res = _dp(device, noise_multiplier=0.0, batch_size=1000)  # q = 1: every rating, every step
    touched = _touched(device)
    assert not res.delta_item_factors[~touched].any()
    assert not res.delta_item_bias[~touched].any()
    assert np.all(np.any(res.delta_item_factors[touched] != 0, axis=1))
    assert np.all(res.delta_item_bias[touched] != 0)
    assert res.epsilon == math.inf


def test_noise_on_untouched_and_touched_rows_matches_opacus_per_step_noise() -> None:
    """Zero-signal setting: the clip is tiny next to the noise, so deltas are pure noise.

    Every row — rated or not — must carry noise of std sqrt(T) * lr * sigma * C / B.
    """
    device = _device(n_items=3000, dim=16, n_ratings=400, seed=3, distinct=True)
    sigma, clip, lr, batch, epochs = 1e4, 1e-2, 1e-2, 40, 2
    res = _dp(device, noise_multiplier=sigma, max_grad_norm=clip, lr=lr, batch_size=batch,
              epochs=epochs, seed=11)
    schedule = local_schedule(n_ratings=400, batch_size=batch, epochs=epochs)
    assert res.steps == schedule.steps == 20
    expected = untouched_row_noise_std(noise_multiplier=sigma, max_grad_norm=clip, lr=lr,
                                       expected_batch_size=schedule.expected_batch_size,
                                       steps=res.steps)
    assert expected == pytest.approx(math.sqrt(20) * lr * sigma * clip / batch)
    touched = _touched(device)
    groups = {
        "untouched factors": res.delta_item_factors[~touched],  # 41 600 samples
        "touched factors": res.delta_item_factors[touched],  # 6 400 samples
        "untouched bias": res.delta_item_bias[~touched],  # 2 600 samples
        "touched bias": res.delta_item_bias[touched],  # 400 samples
    }
    for name, values in groups.items():
        n = values.size
        se = expected / math.sqrt(2 * n)  # standard error of a sample std
        tol = max(6 * se, 0.02 * expected)
        assert abs(float(values.std()) - expected) < tol, name
        assert abs(float(values.mean())) < 6 * expected / math.sqrt(n), name


# --------------------------------------------------------------------------- equivalences


def test_gathered_rows_train_exactly_like_the_full_table() -> None:
    device = _device(n_items=300, n_ratings=40)
    schedule = local_schedule(n_ratings=40, batch_size=10, epochs=2)
    runs = []
    for full in (False, True):
        problem = local_dp._gather(**device, full_table=full)
        trained = local_dp._run_dp_sgd(
            problem, schedule=schedule, lr=0.1, reg=0.01, noise_multiplier=0.0,
            max_grad_norm=0.05, generator=torch.Generator().manual_seed(5), secure_mode=False,
        )
        runs.append(local_dp._dense_deltas(problem, trained, untouched_std=0.0,
                                           generator=None, secure_mode=False))
    (gq, gb), (fq, fb) = runs
    np.testing.assert_allclose(gq, fq, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb, fb, rtol=1e-5, atol=1e-7)
    assert np.any(gq != 0)


def test_dp_without_noise_or_clipping_equals_full_batch_sgd() -> None:
    device = _device(n_items=200, n_ratings=30)
    hyper: dict[str, Any] = {"lr": 0.1, "epochs": 4, "batch_size": 30, "reg": 0.05}
    dp = dp_local_train(**device, **hyper, noise_multiplier=0.0, max_grad_norm=1e6,
                        delta=DELTA, accountant_state=None, seed=0)
    plain = local_train(**device, **hyper, seed=0)
    assert dp.steps == plain.steps == 4
    np.testing.assert_allclose(dp.delta_item_factors, plain.delta_item_factors,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dp.delta_item_bias, plain.delta_item_bias, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dp.user_factor, plain.user_factor, rtol=1e-5, atol=1e-7)
    assert dp.user_bias == pytest.approx(plain.user_bias, rel=1e-6)


def test_dp_training_with_moderate_noise_fits_the_users_ratings() -> None:
    device = _device(n_items=400, n_ratings=120, seed=4)
    res = _dp(device, noise_multiplier=0.5, max_grad_norm=2.0, lr=0.1, epochs=30,
              batch_size=30, seed=2)

    def mse(q: np.ndarray, b: np.ndarray, p: np.ndarray, bu: float) -> float:
        i = device["items"]
        pred = device["global_mean"] + bu + b[i] + q[i] @ p
        return float(np.mean((device["ratings"] - pred) ** 2))

    before = mse(device["item_factors"], device["item_bias"], device["user_factor"],
                 device["user_bias"])
    after = mse(device["item_factors"] + res.delta_item_factors,
                device["item_bias"] + res.delta_item_bias, res.user_factor, res.user_bias)
    assert after < 0.8 * before


# --------------------------------------------------------------------------- accounting


def test_accountant_state_persists_across_rounds() -> None:
    device = _device()
    first = _dp(device)
    second = _dp(device, accountant_state=first.accountant_state, seed=1)
    assert second.epsilon > first.epsilon > 0
    schedule = local_schedule(n_ratings=60, batch_size=15, epochs=2)
    assert second.accountant_state["steps"] == [2 * schedule.steps]
    opacus = RDPAccountant()
    for _ in range(2 * schedule.steps):
        opacus.step(noise_multiplier=1.0, sample_rate=schedule.sample_rate)
    assert second.epsilon == opacus.get_epsilon(delta=DELTA)


def test_prv_accountant_state_persists_too() -> None:
    device = _device()
    first = _dp(device, accountant="prv")
    second = _dp(device, accountant="prv", accountant_state=first.accountant_state)
    assert second.epsilon > first.epsilon > 0
    assert second.accountant_state["accountant"] == "prv"


def test_exhausted_budget_refuses_before_touching_data(monkeypatch: pytest.MonkeyPatch) -> None:
    device = _device()
    first = _dp(device)
    budget = first.epsilon * 1.2  # enough for one round, not for two

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained despite an exhausted budget")

    monkeypatch.setattr(local_dp, "_run_dp_sgd", must_not_train)
    second = _dp(device, accountant_state=first.accountant_state, epsilon_budget=budget)
    assert second.budget_exhausted
    assert second.steps == 0
    assert not second.delta_item_factors.any() and not second.delta_item_bias.any()
    assert second.delta_item_factors.shape == device["item_factors"].shape
    np.testing.assert_array_equal(second.user_factor, device["user_factor"])
    assert second.user_bias == pytest.approx(device["user_bias"])
    assert second.accountant_state == first.accountant_state
    assert second.epsilon == first.epsilon


def test_budget_smaller_than_one_round_never_trains() -> None:
    res = _dp(_device(), epsilon_budget=0.5)
    assert res.budget_exhausted and res.epsilon == 0.0
    assert res.accountant_state["steps"] == []


def test_foreign_accountant_state_is_refused() -> None:
    device = _device()
    first = _dp(device)
    with pytest.raises(PrivacyError, match="accountant"):
        _dp(device, accountant="prv", accountant_state=first.accountant_state)
    with pytest.raises(PrivacyError, match="delta"):
        _dp(device, delta=1e-6, accountant_state=first.accountant_state)


# --------------------------------------------------------------------------- randomness


def test_seed_makes_rounds_reproducible() -> None:
    device = _device()
    a, b, c = _dp(device, seed=7), _dp(device, seed=7), _dp(device, seed=8)
    np.testing.assert_array_equal(a.delta_item_factors, b.delta_item_factors)
    assert not np.array_equal(a.delta_item_factors, c.delta_item_factors)


def test_secure_mode_without_torchcsprng_is_a_privacy_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torchcsprng", None)
    with pytest.raises(PrivacyError, match="torchcsprng"):
        _dp(_device(), secure_mode=True, seed=None)


def test_secure_mode_refuses_a_seed() -> None:
    with pytest.raises(PrivacyError, match="seed"):
        _dp(_device(), secure_mode=True, seed=3)


def test_secure_mode_uses_the_csprng_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []

    def create_random_device_generator(path: str) -> torch.Generator:
        made.append(path)
        return torch.Generator().manual_seed(0)

    fake = types.ModuleType("torchcsprng")
    fake.create_random_device_generator = create_random_device_generator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchcsprng", fake)
    res = _dp(_device(), secure_mode=True, seed=None)
    assert made == ["/dev/urandom"]
    assert np.all(np.any(res.delta_item_factors != 0, axis=1))


# --------------------------------------------------------------------------- validation


def test_inputs_are_not_modified() -> None:
    device = _device()
    copies = {k: np.copy(v) for k, v in device.items()}
    _dp(device)
    local_train(**device, **HYPER)
    for key, value in copies.items():
        np.testing.assert_array_equal(device[key], value)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"items": np.array([], np.int64), "ratings": np.array([], np.float32)}, DataError,
         "no ratings"),
        ({"items": np.array([0, 500]), "ratings": np.array([1.0, 2.0])}, DataError, "items"),
        ({"items": np.array([0, 1]), "ratings": np.array([1.0])}, DataError, "equal length"),
        ({"items": np.array([0.0, 1.0]), "ratings": np.array([1.0, 2.0])}, DataError, "integer"),
        ({"items": np.array([0, 1]), "ratings": np.array([1.0, np.nan])}, DataError, "finite"),
        ({"item_bias": np.zeros(3, np.float32)}, ModelError, "item_bias"),
        ({"user_factor": np.zeros(3, np.float32)}, ModelError, "user_factor"),
        ({"item_factors": np.zeros(500, np.float32)}, ModelError, "item_factors"),
        ({"lr": 0.0}, ConfigError, "lr"),
        ({"batch_size": 0}, ConfigError, "batch_size"),
        ({"epochs": -1}, ConfigError, "epochs"),
        ({"reg": -0.1}, ConfigError, "reg"),
        ({"noise_multiplier": -1.0}, PrivacyError, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, PrivacyError, "max_grad_norm"),
        ({"delta": 0.0}, PrivacyError, "delta"),
        ({"accountant": "moments"}, PrivacyError, "accountant"),
        ({"epsilon_budget": 0.0}, PrivacyError, "budget"),
    ],
)
def test_invalid_arguments_are_refused(change: dict, error: type, match: str) -> None:
    device = _device()
    kwargs = {**device, **HYPER, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
              "delta": DELTA, "accountant_state": None, "seed": 0}
    kwargs.update(change)
    with pytest.raises(error, match=match):
        dp_local_train(**kwargs)


def test_zero_epochs_is_a_no_op_round() -> None:
    device = _device()
    res = _dp(device, epochs=0)
    assert res.steps == 0 and res.epsilon == 0.0
    assert not res.delta_item_factors.any()
