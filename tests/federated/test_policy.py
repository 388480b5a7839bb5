"""Server privacy policy: Poisson cohorts, central noise, accounting, budget stop, the ServerApp adapter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from testkit import opacus_epsilon, train_on_simulation_engine

from fedrec import wire
from fedrec.errors import ConfigError, PrivacyError
from fedrec.federated.plan import build_plan, check_population, with_min_survivors
from fedrec.federated.policy import (
    RatingLevelPolicy,
    ServerPolicy,
    UserLevelPolicy,
    server_policy,
)
from fedrec.privacy.config import DPConfig
from fedrec.runconfig import RunConfig
from fedrec.train.aggregate import RoundSums


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    return opacus_epsilon([(sigma, q, steps)], delta)


def _user_policy(*, population: int = 1000, noise: str = "central", t_min: int | None = None,
                 **dp: Any) -> UserLevelPolicy:
    settings: dict[str, Any] = {"noise_multiplier": 1.3, "clip": 0.5, "cohort_rate": 0.1, **dp}
    plan = build_plan(DPConfig(unit="user", noise=noise, **settings), rounds=10, lr=0.1)  # type: ignore[arg-type]
    if t_min is not None:
        plan = with_min_survivors(plan, t_min)
    policy = server_policy(plan, population=population)
    assert isinstance(policy, UserLevelPolicy)
    return policy


def _zero_sums(n_items: int = 4000, dim: int = 16, n_clients: int = 100) -> RoundSums:
    return RoundSums(np.zeros((n_items, dim)), np.zeros(n_items), np.ones(n_items), n_clients)


def test_central_noise_std_is_sigma_times_clip() -> None:
    policy = _user_policy()
    noisy, expected = policy.finish_round(_zero_sums(), np.random.default_rng(7))
    values = np.concatenate([noisy.item_factors.ravel(), noisy.item_bias])
    assert np.std(values) == pytest.approx(1.3 * 0.5, rel=0.01)
    assert abs(np.mean(values)) < 0.01
    assert expected == pytest.approx(0.1 * 1000)
    assert not noisy.counts.any() and noisy.n_clients == 100


def test_distributed_noise_server_adds_only_the_shortfall() -> None:
    policy = _user_policy(noise="distributed", t_min=80)
    assert policy.server_noise_std(80) == 0.0 and policy.server_noise_std(120) == 0.0
    assert policy.server_noise_std(20) == pytest.approx(1.3 * 0.5 * math.sqrt(60 / 80))
    noisy, _ = policy.finish_round(_zero_sums(n_clients=100), np.random.default_rng(0))
    assert not noisy.item_factors.any()


def test_poisson_cohort_of_the_policy() -> None:
    policy = _user_policy(population=5000)
    rng = np.random.default_rng(3)
    nodes = list(range(5000))
    sizes = [len(policy.cohort(nodes, 17, rng)) for _ in range(100)]
    assert np.mean(sizes) == pytest.approx(500, rel=0.03) and len(set(sizes)) > 10


def test_accountant_steps_once_per_round_and_matches_opacus() -> None:
    policy = _user_policy(delta=1e-4)
    rng = np.random.default_rng(0)
    for rnd in range(1, 6):
        policy.finish_round(_zero_sums(40, 2), rng)
        row = policy.report([])
        assert row["epsilon"] == pytest.approx(_opacus_epsilon(1.3, 0.1, rnd, 1e-4), rel=1e-9)
        assert row["delta"] == 1e-4 and row["dp_unit"] == "user" and row["accountant"] == "rdp"


def test_budget_stop_before_the_round_that_would_exceed() -> None:
    plan = build_plan(DPConfig(unit="user", epsilon=3.0, cohort_rate=0.2), rounds=4, lr=0.1)
    policy = server_policy(plan, population=100)
    rng = np.random.default_rng(0)
    rounds = 0
    while policy.allows_next_round():
        policy.finish_round(_zero_sums(10, 2), rng)
        rounds += 1
        assert rounds < 50
    assert rounds == 4 and policy.report([])["epsilon"] <= 3.0


def test_state_round_trip_keeps_the_spent_budget() -> None:
    policy = _user_policy()
    for _ in range(3):
        policy.finish_round(_zero_sums(10, 2), np.random.default_rng(0))
    fresh = _user_policy()
    fresh.load_state_dict(policy.state_dict())
    assert fresh.report([])["epsilon"] == policy.report([])["epsilon"] > 0
    with pytest.raises(PrivacyError, match="dp.unit"):
        ServerPolicy().load_state_dict(policy.state_dict())


def test_rating_level_report_is_the_worst_case_of_the_public_schedule() -> None:
    """Devices report nothing; the server's epsilon after r rounds is a device sampled in all r."""
    plan = build_plan(DPConfig(unit="rating", epsilon=8.0), rounds=3, lr=0.1)
    assert plan.rating is not None
    policy = server_policy(plan, population=10)
    assert isinstance(policy, RatingLevelPolicy)
    epsilons = []
    for _ in range(3):
        policy.finish_round(_zero_sums(10, 2), np.random.default_rng(0))
        epsilons.append(policy.report([])["epsilon"])
    assert epsilons == [plan.rating.epsilon_after(k) for k in (1, 2, 3)]
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 8.0 and epsilons[2] >= 7.99
    row = policy.report([])
    assert row["dp_unit"] == "rating" and row["max_participations"] == 3 and policy.allows_next_round()
    fresh = server_policy(plan, population=10)
    fresh.load_state_dict(policy.state_dict())
    assert fresh.report([])["epsilon"] == epsilons[-1]


def test_population_checks() -> None:
    plan = build_plan(DPConfig(unit="user", noise_multiplier=1.0, cohort_rate=0.01), rounds=3, lr=0.1)
    with pytest.raises(ConfigError, match="dp.cohort-rate"):
        check_population(plan, 50)
    dist = build_plan(DPConfig(unit="user", noise_multiplier=1.0, cohort_rate=0.1, noise="distributed"),
                      rounds=3, lr=0.1, min_survivors=30)
    with pytest.raises(ConfigError, match="dp.min-survivors"):
        check_population(dist, 200)
    check_population(dist, 400)


# --------------------------------------------------------------------------- the ServerApp adapter


BASE = {"synthetic.n-users": 50, "synthetic.n-items": 20, "rounds": 3}


def test_config_for_population_resolves_t_min_and_forwards_it() -> None:
    cfg = RunConfig.from_flat({**BASE, "dp.unit": "user", "dp.epsilon": 8, "dp.cohort-rate": 0.25,
                               "dp.noise": "distributed"})
    sent = cfg.for_population(400)
    assert sent.flat["dp.min-survivors"] == 100
    plan = sent.privacy_plan()
    assert plan.user is not None and plan.user.min_survivors == 100
    secure = RunConfig.from_flat({**cfg.flat, "secagg.enabled": True, "secagg.threshold": 60})
    assert secure.for_population(400).flat["dp.min-survivors"] == 60
    with pytest.raises(ConfigError, match="dp.min-survivors"):
        RunConfig.from_flat({**cfg.flat, "secagg.enabled": True, "secagg.threshold": 0.5})
    pinned = RunConfig.from_flat({**cfg.flat, "dp.min-survivors": 40})
    assert pinned.for_population(400).flat["dp.min-survivors"] == 40
    central = RunConfig.from_flat({**BASE, "dp.unit": "user", "dp.epsilon": 8, "dp.cohort-rate": 0.25})
    assert central.for_population(400) is central


def test_policy_of_a_config_off_and_rating() -> None:
    privacy = server_policy(RunConfig.from_flat(BASE).privacy_plan(), population=1)
    assert privacy.report([]) == {} and privacy.allows_next_round()
    rating = server_policy(RunConfig.from_flat({**BASE, "dp.unit": "rating", "dp.epsilon": 8}).privacy_plan(),
                           population=1)
    assert rating.report([{wire.MET_OK: 1.0}])["epsilon"] == 0.0  # before any round


def test_policy_of_a_config_user_level_round() -> None:
    cfg = RunConfig.from_flat({**BASE, "dp.unit": "user", "dp.epsilon": 8, "dp.cohort-rate": 0.5})
    privacy = server_policy(cfg.privacy_plan(), population=50)
    rng = np.random.default_rng(0)
    cohort = privacy.cohort(list(range(50)), 50, rng)
    assert 0 < len(cohort) < 50
    sums, expected = privacy.finish_round(_zero_sums(20, 4, len(cohort)), rng)
    assert expected == 25.0 and sums.item_factors.any()
    row = privacy.report([])
    assert {"epsilon", "delta", "dp_unit", "accountant"} <= set(row)
    restored = server_policy(cfg.privacy_plan(), population=50)
    restored.load_state_dict(privacy.state_dict())
    assert restored.report([])["epsilon"] == row["epsilon"]


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["rating", "user"])
def test_flower_round_rows_carry_the_guarantee(unit: str) -> None:
    """Real ServerApp and ClientApps on Ray: every row has epsilon; no DP device sends counts."""
    flat: dict[str, Any] = {"synthetic.n-users": 16, "synthetic.n-items": 30, "synthetic.mean-interactions": 10,
                            "rounds": 2, "eval-every": 1, "model.dim": 4, "dp.unit": unit}
    if unit == "user":
        flat.update({"dp.epsilon": 8, "dp.cohort-rate": 0.5, "dp.delta": 1e-3})
    else:
        flat.update({"dp.noise-multiplier": 1.0, "dp.batch-size": 64})
    cfg = RunConfig.from_flat(flat)
    grid, result = train_on_simulation_engine(cfg, 16)
    replies = grid.replies
    history = result.history
    assert [row["round"] for row in history] == [1, 2]
    for row in history:
        assert row["dp_unit"] == unit and "epsilon" in row and row["epsilon"] > 0 and "rmse" in row
    trains = [r for r in replies if r.metadata.message_type == wire.MSG_TRAIN and not r.has_error()]
    assert trains
    for reply in trains:
        counts = reply.content.array_records[wire.RECORD_UPDATE][wire.ARRAY_COUNTS].numpy()
        assert not counts.any()
        metrics = dict(reply.content.metric_records[wire.RECORD_METRICS])
        assert set(metrics) == {wire.MET_OK}
