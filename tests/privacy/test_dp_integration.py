"""Differential privacy wired into the device round, the reference loop and the run config."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from testkit import opacus_epsilon

from fedrec import wire
from fedrec.data.interactions import Dataset
from fedrec.data.partition import PartitionSource, partitions
from fedrec.errors import ConfigError
from fedrec.federated.device import device_evaluate, device_train, evaluate_user, load_accountant, train_user
from fedrec.federated.plan import PrivacyPlan, build_plan, with_min_survivors
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import FedConfig, ServerState, prior_mean, sample_cohort
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.privacy.calibration import noise_multiplier_for
from fedrec.privacy.clipping import global_l2_norm
from fedrec.privacy.config import DPConfig
from fedrec.runconfig import RunConfig
from fedrec.train.aggregate import RoundSums, ServerOptConfig, pseudo_gradient
from fedrec.train.local import LocalConfig

DELTA = 1e-5
MODEL = MFConfig(dim=4, reg=0.05, bias_reg=0.1)
LOCAL = LocalConfig(steps=5, lr=0.1)


def _opacus_epsilon(phases: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    return opacus_epsilon(phases, delta)


def _source(dataset: Dataset, user: int = 0) -> PartitionSource:
    return partitions(dataset)[user]


def _glob(dataset: Dataset, dim: int = 4) -> GlobalParams:
    return GlobalParams.init(dataset.n_items, dim, global_mean=3.0, seed=1)


def _rating_plan(**dp: Any) -> PrivacyPlan:
    return build_plan(DPConfig(unit="rating", **dp), rounds=2, lr=0.05, local_epochs=1, batch_size=8)


# --------------------------------------------------------------------------- rating level


def _spent(state: dict[str, np.ndarray], user: int) -> float:
    stored = load_accountant(state, user)
    assert stored is not None and stored["unit"] == "rating"
    ledger = PrivacyAccountant("rdp", delta=DELTA, unit="rating")
    ledger.load_state_dict(stored)
    return ledger.epsilon()


#: Pinned: sigma 1.1, q = 1/16, 16 steps a round, delta 1e-5, Opacus RDP.
EPS_SIGMA_1_1 = (1.1, 2.2422, 2.7210)


def test_rating_level_accountant_persists_and_matches_opacus(small_explicit: Dataset) -> None:
    source, glob = _source(small_explicit), _glob(small_explicit)
    plan = _rating_plan(noise_multiplier=1.1)
    assert plan.rating is not None and plan.rating.steps_per_round == 16 and plan.rating.sample_rate == 1 / 16
    state: dict[str, np.ndarray] = {}
    first = device_train(source, state, glob, model=MODEL, local=LOCAL, seed=0, round_=1, privacy=plan,
                         seeded_noise=True)
    eps1 = _spent(state, 0)
    device_train(source, state, glob, model=MODEL, local=LOCAL, seed=0, round_=2, privacy=plan, seeded_noise=True)
    eps2 = _spent(state, 0)
    assert eps1 == pytest.approx(_opacus_epsilon([(1.1, 1 / 16, 16)]), rel=1e-9) == plan.rating.epsilon_after(1)
    assert eps2 == pytest.approx(_opacus_epsilon([(1.1, 1 / 16, 32)]), rel=1e-9) == plan.rating.epsilon_after(2)
    assert (round(eps1, 4), round(eps2, 4)) == EPS_SIGMA_1_1[1:]
    assert first.metrics == {wire.MET_OK: 1.0}


def test_rating_level_epsilon_does_not_depend_on_the_rating_count(small_explicit: Dataset) -> None:
    """The attack of issue 11: epsilon was a one-to-one function of a device's rating count."""
    glob, plan = _glob(small_explicit), _rating_plan(epsilon=8.0)
    sources = partitions(small_explicit)
    counts = {u: len(sources[u].train()) for u in range(len(sources))}
    few, many = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    assert counts[many] > 3 * counts[few]
    spent, histories = [], []
    for user in (few, many):
        state: dict[str, np.ndarray] = {}
        out = device_train(sources[user], state, glob, model=MODEL, local=LOCAL, seed=0, round_=1, privacy=plan,
                           user_offset=user, seeded_noise=True)
        assert out.metrics == {wire.MET_OK: 1.0}
        spent.append(_spent(state, 0))
        histories.append(load_accountant(state, 0))
    assert spent[0] == spent[1] and histories[0] == histories[1]


def test_rating_level_device_stops_at_its_budget_and_sends_a_zero_of_the_same_shape(
        small_explicit: Dataset) -> None:
    source, glob = _source(small_explicit), _glob(small_explicit)
    plan = _rating_plan(epsilon=4.0)  # calibrated for the plan's 2 rounds
    assert plan.rating is not None and plan.rating.max_participations == 2
    state: dict[str, np.ndarray] = {}
    outs, spent = [], []
    for r in (1, 2, 3):
        outs.append(device_train(source, state, glob, model=MODEL, local=LOCAL, seed=0, round_=r, privacy=plan,
                                 seeded_noise=True))
        spent.append(_spent(state, 0))
    assert spent[0] < spent[1] <= 4.0 and spent[2] == spent[1]
    assert spent == [plan.rating.epsilon_after(k) for k in (1, 2, 2)]
    assert all(o.metrics == {wire.MET_OK: 1.0} for o in outs)
    last = outs[2].update
    assert last.item_factors.shape == outs[1].update.item_factors.shape
    assert not last.item_factors.any() and not last.item_bias.any() and not last.counts.any()
    assert outs[1].update.item_factors.any()


def test_rating_level_sends_no_counts_and_noises_every_row(small_explicit: Dataset) -> None:
    source, glob = _source(small_explicit), _glob(small_explicit)
    out = device_train(source, {}, glob, model=MODEL, local=LOCAL, seed=0, round_=1,
                       privacy=_rating_plan(noise_multiplier=1.0), seeded_noise=True)
    assert not out.update.counts.any()
    assert np.all(out.update.item_bias != 0) and np.all(out.update.item_factors != 0)
    assert set(out.metrics) == {wire.MET_OK}


def test_rating_level_noise_is_fresh_unless_seeded(small_explicit: Dataset) -> None:
    source, glob = _source(small_explicit), _glob(small_explicit)
    plan = _rating_plan(noise_multiplier=1.0)

    def run(seeded: bool) -> np.ndarray:
        return device_train(source, {}, glob, model=MODEL, local=LOCAL, seed=0, round_=1, privacy=plan,
                            seeded_noise=seeded).update.item_bias

    np.testing.assert_array_equal(run(True), run(True))
    assert not np.array_equal(run(False), run(False))


def test_rating_level_calibration_spends_the_whole_budget_and_no_more() -> None:
    """One sigma for the population, calibrated for a device sampled in every round; pinned values."""
    plan = build_plan(DPConfig(unit="rating", epsilon=8.0), rounds=5, lr=0.1, local_epochs=1, batch_size=8)
    assert plan.rating is not None
    sigma = plan.rating.noise_multiplier
    eps = _opacus_epsilon([(sigma, 1 / 16, 5 * 16)])
    assert 7.99 <= eps <= 8.0 and plan.rating.epsilon_after(5) == pytest.approx(eps, rel=1e-9)
    assert sigma == pytest.approx(0.774, abs=0.002)  # the calibration stops within 0.01 of epsilon
    assert plan.rating.worst_case_epsilon(7) == plan.rating.epsilon_after(5)


@pytest.mark.parametrize("eps,q,steps", [(8.0, 0.2, 150), (1.0, 0.01, 1000), (16.0, 1.0, 3), (0.5, 1.0, 1),
                                         (4.0, 0.05, 30)])
def test_calibration_meets_the_opacus_contract(eps: float, q: float, steps: int) -> None:
    from opacus.accountants.utils import get_noise_multiplier

    sigma = noise_multiplier_for(epsilon=eps, delta=DELTA, sample_rate=q, steps=steps)
    reached = _opacus_epsilon([(sigma, q, steps)])
    assert eps - 0.01 <= reached <= eps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opacus_sigma = get_noise_multiplier(target_epsilon=eps, target_delta=DELTA, sample_rate=q, steps=steps,
                                            accountant="rdp", epsilon_tolerance=0.01)
    assert sigma == pytest.approx(opacus_sigma, rel=0.01)


def test_evaluation_under_rating_dp_folds_in_locally(small_explicit: Dataset) -> None:
    source, glob = _source(small_explicit), _glob(small_explicit)
    state: dict[str, np.ndarray] = {}
    plan = _rating_plan(noise_multiplier=1.0)
    device_train(source, state, glob, model=MODEL, local=LOCAL, seed=0, round_=1, privacy=plan)
    refolded = device_evaluate(source, state, glob, model=MODEL, local=LOCAL, scale=(1.0, 5.0), seed=0,
                               privacy=plan)
    stored = device_evaluate(source, state, glob, model=MODEL, local=LocalConfig(fold_in=False, steps=5, lr=0.1),
                             scale=(1.0, 5.0), seed=0, privacy=plan)
    assert refolded.result()["rmse"] != stored.result()["rmse"]


# --------------------------------------------------------------------------- user level


def _user_plan(noise: str = "central", **extra: Any) -> PrivacyPlan:
    dp = DPConfig(unit="user", noise_multiplier=1.0, clip=0.05, cohort_rate=0.5, noise=noise)  # type: ignore[arg-type]
    return build_plan(dp, rounds=3, lr=0.1, **extra)


def test_user_level_update_is_clipped_jointly_without_counts(small_explicit: Dataset) -> None:
    glob = _glob(small_explicit)
    for user in range(5):
        out = device_train(_source(small_explicit, user), {}, glob, model=MODEL, local=LOCAL, seed=0,
                           round_=1, privacy=_user_plan())
        norm = global_l2_norm([out.update.item_factors, out.update.item_bias])
        assert 0 < norm <= 0.05 * (1 + 1e-6)
        assert not out.update.counts.any()
        assert out.metrics == {wire.MET_OK: 1.0}


def test_distributed_noise_share_is_sigma_s_over_sqrt_t_min(small_explicit: Dataset) -> None:
    plan = with_min_survivors(_user_plan("distributed"), 16)
    assert plan.user is not None and plan.user.device_noise_std() == pytest.approx(1.0 * 0.05 / 4)
    glob = GlobalParams(np.zeros((small_explicit.n_items, 4), np.float32),
                        np.zeros(small_explicit.n_items, np.float32), 3.0)
    noisy = device_train(_source(small_explicit), {}, glob, model=MODEL, local=LOCAL, seed=0, round_=1,
                         privacy=plan, seeded_noise=True).update
    clean = device_train(_source(small_explicit), {}, glob, model=MODEL, local=LOCAL, seed=0, round_=1,
                         privacy=_user_plan()).update
    noise = np.concatenate([(noisy.item_factors - clean.item_factors).ravel(), noisy.item_bias - clean.item_bias])
    assert np.std(noise) == pytest.approx(0.05 / 4, rel=0.15)


def test_distributed_noise_without_t_min_is_refused(small_explicit: Dataset) -> None:
    with pytest.raises(ConfigError, match="dp.min-survivors"):
        device_train(_source(small_explicit), {}, _glob(small_explicit), model=MODEL, local=LOCAL, seed=0,
                     round_=1, privacy=_user_plan("distributed"))


def _user_run(dataset: Dataset, *, rounds: int, plan_rounds: int, epsilon: float = 8.0,
              q: float = 0.5) -> tuple[PrivacyPlan, list[dict[str, Any]]]:
    dp = DPConfig(unit="user", epsilon=epsilon, delta=1 / 150, clip=0.5, cohort_rate=q)
    plan = build_plan(dp, rounds=plan_rounds, lr=0.1)
    fed = FedConfig(rounds=rounds, eval_every=1, averaging="fedavg", local=LocalConfig(steps=5, lr=0.1))
    _, history = train_in_process(dataset, MODEL, fed, privacy=plan)
    return plan, history


def test_user_level_epsilon_in_every_row_equals_opacus(small_explicit: Dataset) -> None:
    plan, history = _user_run(small_explicit, rounds=4, plan_rounds=4)
    assert plan.user is not None
    sigma, q = plan.user.noise_multiplier, plan.user.sample_rate
    assert [row["round"] for row in history] == [1, 2, 3, 4]
    for row in history:
        assert row["dp_unit"] == "user" and row["accountant"] == "rdp" and row["delta"] == 1 / 150
        assert row["epsilon"] == pytest.approx(_opacus_epsilon([(sigma, q, int(row["round"]))], 1 / 150), rel=1e-9)
    assert 7.9 < history[-1]["epsilon"] <= 8.0
    assert history[-1]["expected_clients"] == pytest.approx(q * 150)


def test_user_level_run_stops_before_exceeding_the_budget(small_explicit: Dataset) -> None:
    _, history = _user_run(small_explicit, rounds=8, plan_rounds=3, epsilon=2.0)
    assert history[-1]["round"] == 3 and history[-1]["epsilon"] <= 2.0
    assert "rmse" in history[-1]


def test_poisson_cohorts_have_rate_q() -> None:
    rng = np.random.default_rng(0)
    nodes = list(range(2000))
    sizes = [len(sample_cohort(nodes, 10, rng, poisson_rate=0.05)) for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(100, rel=0.05)
    assert np.std(sizes) == pytest.approx(math.sqrt(2000 * 0.05 * 0.95), rel=0.25)


# --------------------------------------------------------------------------- reference loop


def _pre_privacy_reference(dataset: Dataset, model: MFConfig, fed: FedConfig) -> list[dict[str, float]]:
    """The plain loop: train_user per sampled user, no policy, evaluation of the users trained so far."""
    train, test = dataset.train, dataset.test
    by_user, test_by_user = train.by_user(), test.by_user()
    mu = prior_mean(model.kind, dataset.rating_scale)
    state = ServerState.start(train.n_items, model, fed, global_mean=mu)
    locals_: dict[int, LocalParams] = {}
    users = [u for u in range(train.n_users) if len(by_user[u])]
    size = fed.cohort_size(len(users))
    history = []
    for rnd in range(1, fed.rounds + 1):
        cohort = sample_cohort(users, size, state.rng)
        sums = [np.zeros_like(state.glob.item_factors), np.zeros_like(state.glob.item_bias),
                np.zeros(state.glob.n_items, np.float32)]
        for u in cohort:
            rows = by_user[u]
            update, locals_[u] = train_user(state.glob, locals_.get(u), train.items[rows], train.ratings[rows],
                                              model=model, config=fed.local,
                                              rng=np.random.default_rng([fed.seed, rnd, u]))
            sums[0] += update.item_factors
            sums[1] += update.item_bias
            sums[2] += update.counts
        state.apply(RoundSums(sums[0], sums[1], sums[2], len(cohort)))
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            from fedrec.metrics.core import MetricSums

            ms = MetricSums()
            for u, local in locals_.items():
                rows = test_by_user[u]
                ms.merge(evaluate_user(state.glob, local, train.items[by_user[u]], test.items[rows],
                                         test.ratings[rows], kind=model.kind, scale=dataset.rating_scale))
            history.append({"round": float(rnd), **ms.result()})
    return history


@pytest.mark.parametrize("case", ["explicit", "explicit-half-cohort", "implicit"])
def test_reference_without_dp_is_unchanged(case: str, small_explicit: Dataset, small_implicit: Dataset) -> None:
    if case == "implicit":
        data, model = small_implicit, MFConfig(kind="implicit", dim=8, negatives=4, reg=0.1, bias_reg=0.1)
        fed = FedConfig(rounds=4, eval_every=2, cohort=0.5, local=LocalConfig(steps=5, lr=0.1))
    elif case == "explicit":
        data, model = small_explicit, MFConfig(dim=8, reg=0.1, bias_reg=0.1)
        fed = FedConfig(rounds=5, eval_every=2, local=LocalConfig(steps=5, lr=0.1))
    else:
        data, model = small_explicit, MFConfig(dim=8, reg=0.1, bias_reg=0.1)
        fed = FedConfig(rounds=4, eval_every=2, cohort=0.5, local=LocalConfig(fold_in=False, steps=5, lr=0.1),
                        server=ServerOptConfig(name="adam", lr=0.1))
    _, history = train_in_process(data, model, fed)
    assert history == _pre_privacy_reference(data, model, fed)
    _, with_off_plan = train_in_process(data, model, fed, privacy=PrivacyPlan())
    assert with_off_plan == history


def test_reference_rating_level_rows_report_the_public_worst_case(small_explicit: Dataset) -> None:
    cfg = RunConfig.from_flat({"synthetic.n-users": 40, "synthetic.n-items": 30, "synthetic.mean-interactions": 10,
                               "model.dim": 4, "rounds": 2, "eval-every": 1, "dp.unit": "rating",
                               "dp.noise-multiplier": 1.0, "dp.batch-size": 64})
    from fedrec.data.spec import load_run_dataset

    plan = cfg.privacy_plan()
    assert plan.rating is not None
    _, history = train_in_process(load_run_dataset(cfg.data), cfg.model, cfg.fed, privacy=plan)
    for k, row in enumerate(history, start=1):
        assert row["dp_unit"] == "rating" and row["delta"] == DELTA and row["accountant"] == "rdp"
        assert row["epsilon"] == plan.rating.epsilon_after(k) and row["noise_multiplier"] == 1.0
    assert history[1]["epsilon"] > history[0]["epsilon"]


def test_reference_refuses_item_averaging_under_dp(small_explicit: Dataset) -> None:
    with pytest.raises(ConfigError, match="strategy.averaging"):
        train_in_process(small_explicit, MODEL, FedConfig(rounds=1, local=LOCAL), privacy=_user_plan())


def test_expected_cohort_divides_the_noisy_sum() -> None:
    sums = RoundSums(np.ones((3, 2)), np.ones(3), np.zeros(3), 7)
    dq, _ = pseudo_gradient(sums, averaging="fedavg", expected_clients=10.0)
    np.testing.assert_allclose(dq, 0.1)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("flat,key", [
    ({"dp.unit": "rating", "dp.epsilon": 8, "protocol": "R1"}, "dp.unit"),
    ({"dp.unit": "rating", "dp.epsilon": 8, "dp.noise": "distributed"}, "dp.noise"),
    ({"dp.unit": "rating", "dp.epsilon": 8, "dp.cohort-rate": 0.5}, "dp.cohort-rate"),
    ({"dp.unit": "user", "dp.epsilon": 8, "dp.cohort-rate": 1.5}, "dp.cohort-rate"),
    ({"dp.unit": "user", "dp.epsilon": 8, "dp.cohort-rate": 0.0}, "dp.cohort-rate"),
    ({"dp.unit": "user", "dp.epsilon": 8, "dp.batch-size": 8}, "dp.batch-size"),
    ({"dp.unit": "rating", "dp.epsilon": 8, "dp.local-epochs": 0}, "dp.local-epochs"),
    ({"dp.unit": "user", "dp.epsilon": 8, "dp.min-survivors": 5}, "dp.min-survivors"),
    ({"dp.unit": "user", "dp.epsilon": 8, "dp.noise": "distributed", "dp.min-survivors": 0}, "dp.min-survivors"),
    ({"dp.unit": "user", "dp.epsilon": 8, "cohort": 0.5}, "cohort"),
    ({"dp.unit": "user", "dp.epsilon": 8, "strategy.averaging": "item"}, "strategy.averaging"),
    ({"dp.unit": "rating", "dp.epsilon": 8, "dp.secure-mode": True}, "dp.secure-mode"),
    ({"dp.unit": "user"}, "dp.epsilon"),
])
def test_nonsense_combinations_fail_at_config_time(flat: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_flat(flat)


def test_dp_switches_the_default_averaging_to_fedavg() -> None:
    assert RunConfig.from_flat({"dp.unit": "user", "dp.epsilon": 8}).fed.averaging == "fedavg"
    assert RunConfig.from_flat({}).fed.averaging == "item"


def test_plan_is_shared_by_devices_and_server() -> None:
    cfg = RunConfig.from_flat({"dp.unit": "user", "dp.epsilon": 4, "dp.cohort-rate": 0.1, "rounds": 20})
    plan = cfg.privacy_plan()
    assert plan.user is not None and plan.user.noise_multiplier > 0
    assert RunConfig.from_flat(dict(cfg.flat)).privacy_plan() is plan
    eps = _opacus_epsilon([(plan.user.noise_multiplier, 0.1, 20)])
    assert 3.9 < eps <= 4.0


def test_infinite_epsilon_means_no_noise() -> None:
    cfg = RunConfig.from_flat({"dp.unit": "user", "dp.epsilon": math.inf, "dp.cohort-rate": 0.1})
    user = cfg.privacy_plan().user
    assert user is not None and user.noise_multiplier == 0.0 and user.central_noise_std == 0.0
