"""Device step, fold-in, aggregation and the reference loop (no transport)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.interactions import Dataset
from fedrec.errors import ConfigError
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import FedConfig, prior_mean, sample_cohort
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.train.aggregate import RoundSums, ServerOptConfig, ServerOptimizer, pseudo_gradient
from fedrec.train.foldin import fold_in
from fedrec.train.local import LocalConfig, local_update, sample_negatives


def _glob(n: int = 20, d: int = 4, seed: int = 0) -> GlobalParams:
    return GlobalParams.init(n, d, global_mean=3.0, seed=seed)


def test_fold_in_solves_the_ridge_problem() -> None:
    glob = _glob()
    items = np.array([1, 4, 7, 9])
    ratings = np.array([5.0, 3.0, 4.0, 1.0])
    local = fold_in(glob, items, ratings, reg=0.1, bias_reg=0.2)
    # gradient of the objective at the solution is zero
    q, b = glob.item_factors[items].astype(np.float64), glob.item_bias[items]
    err = ratings - (glob.global_mean + local.user_bias + b + q @ local.user_factor)
    grad_p = -(err[:, None] * q).sum(0) + len(items) * 0.1 * local.user_factor
    grad_b = -err.sum() + len(items) * 0.2 * local.user_bias
    assert np.abs(grad_p).max() < 1e-4 and abs(grad_b) < 1e-4


def test_fold_in_of_new_user_is_zero() -> None:
    local = fold_in(_glob(), np.array([], np.int64), np.array([]), reg=0.1, bias_reg=0.1)
    assert not local.user_factor.any() and local.user_bias == 0.0


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_update_is_dense_and_zero_outside_touched_rows(kind: str) -> None:
    glob, rng = _glob(), np.random.default_rng(0)
    items = np.array([2, 5, 11])
    model = MFConfig(kind=kind, dim=4, negatives=2, reg=0.1, bias_reg=0.1)  # type: ignore[arg-type]
    update, _ = local_update(glob, LocalParams(np.full(4, 0.1, np.float32)), items, np.array([4.0, 2.0, 5.0]),
                             model=model, config=LocalConfig(steps=5, lr=0.1), rng=rng)
    assert update.item_factors.shape == glob.item_factors.shape and update.counts.shape == (20,)
    touched = np.flatnonzero(update.counts)
    assert set(items) <= set(touched)
    untouched = np.setdiff1d(np.arange(20), touched)
    assert not update.item_factors[untouched].any() and not update.item_bias[untouched].any()
    if kind == "explicit":
        assert set(touched) == set(items)


def test_explicit_local_step_reduces_loss() -> None:
    glob = _glob()
    items, ratings = np.arange(10), np.linspace(1, 5, 10)
    model, rng = MFConfig(dim=4, reg=0.1, bias_reg=0.1), np.random.default_rng(0)
    one, _ = local_update(glob, LocalParams.zeros(4), items, ratings, model=model,
                          config=LocalConfig(steps=1, lr=0.01), rng=rng)
    many, _ = local_update(glob, LocalParams.zeros(4), items, ratings, model=model,
                           config=LocalConfig(steps=20, lr=0.1), rng=rng)
    assert many.loss < one.loss


@given(st.integers(5, 200), st.integers(0, 30), st.integers(1, 60), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_negatives_are_distinct_and_never_positive(n_items: int, n_pos: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    positives = rng.choice(n_items, size=min(n_pos, n_items), replace=False)
    neg = sample_negatives(n_items, positives, n, rng)
    assert len(neg) == min(n, n_items - len(positives))
    assert len(np.unique(neg)) == len(neg) and not np.isin(neg, positives).any()


def test_item_averaging_divides_by_touch_counts() -> None:
    sums = RoundSums(np.array([[2.0], [3.0], [0.0]]), np.array([2.0, 3.0, 0.0]), np.array([2.0, 1.0, 0.0]), 2)
    dq, db = pseudo_gradient(sums, averaging="item")
    np.testing.assert_allclose(dq[:, 0], [1.0, 3.0, 0.0])
    dq, _ = pseudo_gradient(sums, averaging="fedavg")
    np.testing.assert_allclose(dq[:, 0], [1.0, 1.5, 0.0])
    dq, _ = pseudo_gradient(sums, averaging="fedavg", expected_clients=4)
    np.testing.assert_allclose(dq[:, 0], [0.5, 0.75, 0.0])


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad"])
def test_server_optimizers_move_along_the_update(name: str) -> None:
    glob = GlobalParams(np.zeros((3, 2), np.float32), np.zeros(3, np.float32))
    opt = ServerOptimizer(ServerOptConfig(name=name, lr=0.5))
    new = opt.apply(glob, np.ones((3, 2)), np.full(3, -1.0))
    assert (new.item_factors > 0).all() and (new.item_bias < 0).all()


@pytest.mark.parametrize("kwargs,key", [({"name": "rmsprop"}, "strategy.optimizer"),
                                        ({"lr": -1}, "strategy.server-lr")])
def test_server_opt_config_rejects(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ServerOptConfig(**kwargs)


def test_cohort_larger_than_population_is_refused() -> None:
    with pytest.raises(ConfigError, match="cohort"):
        FedConfig(cohort=50).cohort_size(10)
    assert FedConfig(cohort=0.25).cohort_size(10) == 2


def test_sampling_fixed_and_poisson() -> None:
    rng = np.random.default_rng(0)
    nodes = list(range(1000))
    assert len(sample_cohort(nodes, 10, rng)) == 10
    sizes = [len(sample_cohort(nodes, 0, rng, poisson_rate=0.1)) for _ in range(50)]
    assert 80 < np.mean(sizes) < 120


def test_prior_mean_is_public() -> None:
    assert prior_mean("explicit", (1.0, 5.0)) == 3.0 and prior_mean("explicit", None) == 0.0
    assert prior_mean("implicit", (1.0, 5.0)) == 0.0


def test_reference_loop_learns_explicit(small_explicit: Dataset) -> None:
    _, history = train_in_process(small_explicit, MFConfig(dim=8, reg=0.1, bias_reg=0.1),
                               FedConfig(rounds=15, eval_every=5, local=LocalConfig(steps=5, lr=0.1)))
    assert history[-1]["rmse"] < history[0]["rmse"]
    assert history[-1]["rmse"] < 0.9
