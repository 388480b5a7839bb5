"""Accounting: the facade must agree with Opacus and keep its history intact."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from testkit import opacus_epsilon

from fedrec.errors import BudgetExhaustedError, PrivacyError
from fedrec.privacy.accounting import PrivacyAccountant, epsilon_of, merge_step
from fedrec.privacy.budget import PrivacyBudget

DELTA = 1e-5


def _opacus_epsilon(cls: type, phases: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon from an Opacus accountant stepped one invocation at a time."""
    return opacus_epsilon(phases, delta, accountant=cls)


def _facade(kind: str, phases: list[tuple[float, float, int]]) -> PrivacyAccountant:
    acc = PrivacyAccountant(kind, delta=DELTA)
    for sigma, q, steps in phases:
        acc.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    return acc


KNOWN = [
    [(1.0, 0.25, 20)],
    [(1.1, 0.01, 300)],
    [(0.8, 1.0, 5)],
    [(1.0, 0.25, 20), (2.0, 0.1, 40), (1.0, 0.25, 3)],
]


@pytest.mark.parametrize("phases", KNOWN)
def test_rdp_epsilon_equals_opacus_rdp_accountant(phases: list) -> None:
    assert _facade("rdp", phases).epsilon() == _opacus_epsilon(RDPAccountant, phases, DELTA)


@pytest.mark.parametrize("phases", KNOWN[:2] + KNOWN[3:])
def test_prv_epsilon_equals_opacus_prv_accountant(phases: list) -> None:
    assert _facade("prv", phases).epsilon() == pytest.approx(
        _opacus_epsilon(PRVAccountant, phases, DELTA), rel=1e-12
    )


def test_gdp_epsilon_equals_opacus_gaussian_accountant() -> None:
    phases = [(1.2, 0.05, 100)]
    assert _facade("gdp", phases).epsilon() == pytest.approx(
        _opacus_epsilon(GaussianAccountant, phases, DELTA), rel=1e-12
    )


def test_history_merges_like_opacus_step() -> None:
    phases = [(1.0, 0.25, 3), (1.0, 0.25, 2), (2.0, 0.1, 1), (1.0, 0.25, 1)]
    opacus = RDPAccountant()
    for sigma, q, steps in phases:
        for _ in range(steps):
            opacus.step(noise_multiplier=sigma, sample_rate=q)
    assert list(_facade("rdp", phases).history) == opacus.history


def test_to_opacus_carries_history_and_epsilon() -> None:
    acc = _facade("rdp", KNOWN[3])
    opacus = acc.to_opacus()
    assert isinstance(opacus, RDPAccountant)
    assert opacus.get_epsilon(delta=DELTA) == acc.epsilon()


def test_empty_history_spends_nothing() -> None:
    for kind in ("rdp", "prv", "gdp"):
        assert PrivacyAccountant(kind, delta=DELTA).epsilon() == 0.0


@pytest.mark.parametrize("kind", ["rdp", "prv", "gdp"])
def test_zero_noise_is_infinite_epsilon(kind: str) -> None:
    assert _facade(kind, [(0.0, 0.5, 3)]).epsilon() == math.inf


def test_epsilon_strictly_increases_with_steps() -> None:
    acc = PrivacyAccountant("rdp", delta=DELTA)
    last = 0.0
    for _ in range(5):
        acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=10)
        now = acc.epsilon()
        assert now > last
        last = now


def test_state_dict_round_trips_through_json() -> None:
    acc = _facade("rdp", KNOWN[3])
    state = json.loads(json.dumps(acc.state_dict()))
    back = PrivacyAccountant.from_state_dict(state)
    assert back.history == acc.history
    assert back.epsilon() == acc.epsilon()
    assert back.total_steps == 63


def test_state_dict_is_flat_for_a_config_record() -> None:
    state = _facade("prv", KNOWN[3]).state_dict()
    for value in state.values():
        if isinstance(value, list):
            assert len({type(v) for v in value}) <= 1
            assert all(isinstance(v, (int, float)) for v in value)
        else:
            assert isinstance(value, (str, float, int))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("accountant", "prv"),
        ("delta", 1e-6),
        ("unit", "user"),
        ("steps", [1]),
        ("sample_rates", [1.5, 0.1]),
        ("noise_multipliers", [-1.0, 1.0]),
    ],
)
def test_load_state_dict_rejects_foreign_or_broken_state(key: str, value: object) -> None:
    state = _facade("rdp", [(1.0, 0.25, 2), (2.0, 0.1, 1)]).state_dict()
    state[key] = value
    with pytest.raises(PrivacyError):
        PrivacyAccountant("rdp", delta=DELTA).load_state_dict(state)


def test_load_state_dict_rejects_missing_keys() -> None:
    state = _facade("rdp", [(1.0, 0.25, 2)]).state_dict()
    del state["steps"]
    with pytest.raises(PrivacyError, match="steps"):
        PrivacyAccountant("rdp", delta=DELTA).load_state_dict(state)


def test_gdp_refuses_changing_parameters() -> None:
    acc = _facade("gdp", [(1.0, 0.1, 3)])
    with pytest.raises(PrivacyError, match="gdp"):
        acc.step(noise_multiplier=2.0, sample_rate=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -0.1, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": math.inf, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 1.01, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1.5},
    ],
)
def test_invalid_steps_are_refused(kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        PrivacyAccountant("rdp", delta=DELTA).step(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("xyz",), {"delta": DELTA}), (("rdp",), {"delta": 0.0}), (("rdp",), {"delta": 1.0}),
     (("rdp",), {"delta": DELTA, "unit": "item"})],
)
def test_invalid_construction_is_refused(args: tuple, kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        PrivacyAccountant(*args, **kwargs)


def test_would_exceed_matches_epsilon_after() -> None:
    acc = _facade("rdp", [(1.0, 0.25, 20)])
    after = acc.epsilon_after(noise_multiplier=1.0, sample_rate=0.25, steps=20)
    assert acc.would_exceed(epsilon_budget=after * 0.999, noise_multiplier=1.0,
                            sample_rate=0.25, steps=20)
    assert not acc.would_exceed(epsilon_budget=after, noise_multiplier=1.0,
                                sample_rate=0.25, steps=20)
    assert not acc.would_exceed(epsilon_budget=math.inf, noise_multiplier=0.0,
                                sample_rate=0.25, steps=20)
    assert acc.total_steps == 20


def test_report_names_unit_and_accountant() -> None:
    report = _facade("rdp", [(1.0, 0.25, 20)]).report()
    assert report == {"epsilon": pytest.approx(9.0884, abs=1e-3), "delta": DELTA,
                      "accountant": "rdp", "unit": "rating"}


def test_merge_step_with_zero_steps_is_a_no_op() -> None:
    assert merge_step((), noise_multiplier=1.0, sample_rate=0.5, steps=0) == ()
    assert epsilon_of("rdp", ((1.0, 0.5, 0),), DELTA) == 0.0


# --------------------------------------------------------------------------- budgets


def test_budget_refuses_and_records_nothing() -> None:
    acc = PrivacyAccountant("rdp", delta=DELTA)
    budget = PrivacyBudget(epsilon=5.0, accountant=acc)
    budget.spend(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    before = acc.history
    with pytest.raises(BudgetExhaustedError, match="exhausted"):
        budget.spend(noise_multiplier=0.5, sample_rate=1.0, steps=100)
    assert acc.history == before
    assert 0 < budget.remaining < 5.0
    assert budget.report()["epsilon_budget"] == 5.0


def test_infinite_budget_never_refuses() -> None:
    budget = PrivacyBudget(epsilon=math.inf, accountant=PrivacyAccountant("rdp", delta=DELTA))
    assert budget.spend(noise_multiplier=0.0, sample_rate=1.0, steps=10) == math.inf


@pytest.mark.parametrize("eps", [0.0, -1.0, math.nan])
def test_budget_must_be_positive(eps: float) -> None:
    with pytest.raises(PrivacyError):
        PrivacyBudget(epsilon=eps, accountant=PrivacyAccountant("rdp", delta=DELTA))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sigma=st.floats(0.3, 5.0),
    q=st.floats(1e-3, 0.5),
    steps=st.integers(1, 200),
    budget=st.floats(0.1, 20.0),
)
def test_budget_is_never_exceeded(sigma: float, q: float, steps: int, budget: float) -> None:
    acc = PrivacyAccountant("rdp", delta=DELTA)
    cap = PrivacyBudget(epsilon=budget, accountant=acc)
    for _ in range(40):
        if not cap.allows(noise_multiplier=sigma, sample_rate=q, steps=steps):
            with pytest.raises(BudgetExhaustedError):
                cap.spend(noise_multiplier=sigma, sample_rate=q, steps=steps)
            break
        cap.spend(noise_multiplier=sigma, sample_rate=q, steps=steps)
        assert acc.epsilon() <= budget
    assert acc.epsilon() <= budget


def test_would_exceed_checks_gdp_homogeneity_even_without_a_budget() -> None:
    acc = _facade("gdp", [(1.0, 0.1, 3)])
    with pytest.raises(PrivacyError, match="gdp"):
        acc.would_exceed(epsilon_budget=math.inf, noise_multiplier=2.0, sample_rate=0.1, steps=1)
