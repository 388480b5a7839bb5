"""ALS trainers and the federated full-catalogue implicit model ("wrmf"), checked against dense solves."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedrec.data.interactions import Dataset, Interactions
from fedrec.errors import ConfigError
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import FedConfig, ServerState
from fedrec.metrics.evaluate import evaluate
from fedrec.model.mf import MFConfig, missing_weights
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.runconfig import RunConfig
from fedrec.train.aggregate import RoundSums, ServerOptConfig
from fedrec.train.als import ALSConfig, _biased_half, _sides, train_als, wrmf_solve
from fedrec.train.central import CentralConfig, train_central
from fedrec.train.foldin import fold_in
from fedrec.train.local import LocalConfig, local_update
from fedrec.wire import ARRAY_ITEM_CURVATURE, ARRAY_USER_GRAM

WRMF = MFConfig(kind="implicit", loss="wrmf", dim=4, reg=0.5, confidence=5.0)


def _random_implicit(seed: int, n_users: int = 12, n_items: int = 15, n: int = 60) -> Interactions:
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, [n_users, n_items], size=(n, 2)), axis=0)
    return Interactions.build(pairs[:, 0], pairs[:, 1], n_users=n_users, n_items=n_items)


def _dense_user_solve(train: Interactions, q: np.ndarray, model: MFConfig, w: np.ndarray,
                      missing: np.ndarray | None = None) -> np.ndarray:
    """Hu et al.'s closed form with dense C_u and y_u, user by user (non-interactions weigh ``missing``)."""
    out = np.zeros((train.n_users, q.shape[1]))
    for u in range(train.n_users):
        c = np.ones(train.n_items) if missing is None else missing.astype(np.float64).copy()
        y = np.zeros(train.n_items)
        mask = train.users == u
        c[train.items[mask]] = 1 + model.confidence * w[mask]
        y[train.items[mask]] = 1.0
        a = q.T @ (c[:, None] * q) + model.reg * np.eye(q.shape[1])
        out[u] = np.linalg.solve(a, q.T @ (c * y))
    return out


def _dense_item_solve(train: Interactions, p: np.ndarray, model: MFConfig, missing: np.ndarray) -> np.ndarray:
    """The item half-step's closed form: item ``i``'s non-interactions all weigh ``missing[i]``."""
    out = np.zeros((train.n_items, p.shape[1]))
    for i in range(train.n_items):
        c, y = np.full(train.n_users, float(missing[i])), np.zeros(train.n_users)
        mask = train.items == i
        c[train.users[mask]] = 1 + model.confidence
        y[train.users[mask]] = 1.0
        a = p.T @ (c[:, None] * p) + model.reg * np.eye(p.shape[1])
        out[i] = np.linalg.solve(a, p.T @ (c * y))
    return out


@pytest.mark.parametrize("cg_steps", [0, 30])
def test_wrmf_half_step_is_the_dense_closed_form(cg_steps: int) -> None:
    train = _random_implicit(0)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(train))
    by_user, _ = _sides(train.users, train.items, (w,), train.n_users, train.n_items)
    q = np.random.default_rng(2).normal(0, 0.3, (train.n_items, 4))
    got = wrmf_solve(by_user, torch.from_numpy(q).float(), torch.zeros(train.n_users, 4),
                     confidence=WRMF.confidence, reg=WRMF.reg, cg_steps=cg_steps).numpy()
    np.testing.assert_allclose(got, _dense_user_solve(train, q, WRMF, w), atol=2e-4)


@pytest.mark.parametrize("cg_steps", [0, 40])
def test_popularity_weighted_half_steps_are_the_dense_closed_form(cg_steps: int) -> None:
    """``model.pop-exponent``: each item's non-interactions weigh ``m_i``, on both half-steps."""
    train = _random_implicit(8)
    w = np.ones(len(train))
    m = missing_weights(np.bincount(train.items, minlength=train.n_items), -0.5)
    assert m.mean() == pytest.approx(1.0) and m.std() > 0.05
    by_user, by_item = _sides(train.users, train.items, (w,), train.n_users, train.n_items)
    q = np.random.default_rng(2).normal(0, 0.3, (train.n_items, 4))
    p = np.random.default_rng(3).normal(0, 0.3, (train.n_users, 4))
    mt = torch.from_numpy(m).float()
    got_p = wrmf_solve(by_user, torch.from_numpy(q).float(), torch.zeros(train.n_users, 4),
                       confidence=WRMF.confidence, reg=WRMF.reg, cg_steps=cg_steps, other_missing=mt).numpy()
    np.testing.assert_allclose(got_p, _dense_user_solve(train, q, WRMF, w, m), atol=2e-4)
    got_q = wrmf_solve(by_item, torch.from_numpy(p).float(), torch.zeros(train.n_items, 4),
                       confidence=WRMF.confidence, reg=WRMF.reg, cg_steps=cg_steps, row_missing=mt).numpy()
    np.testing.assert_allclose(got_q, _dense_item_solve(train, p, WRMF, m), atol=2e-4)


def test_missing_weights_refuse_out_of_range_exponent() -> None:
    with pytest.raises(ConfigError, match="model.pop-exponent"):
        MFConfig(kind="implicit", loss="wrmf", pop_exponent=9.0)
    np.testing.assert_allclose(missing_weights(np.array([0, 3, 10]), 0.0), 1.0)
    cfg = RunConfig.from_flat({"protocol": "R1", "model.loss": "wrmf", "model.pop-exponent": -0.25})
    assert cfg.model.pop_exponent == -0.25


def test_federated_popularity_weights_keep_the_als_fixed_point() -> None:
    """At the converged ALS solution of the popularity-weighted loss, one federated round (the devices'
    solves against the public weights, the server's step from the sums) leaves the table where it is,
    and the server derives the same weights from the round's counts."""
    train = _random_implicit(9, n_users=30, n_items=20, n=200)
    model = replace(WRMF, pop_exponent=-0.5)
    fitted = train_als(train, model, ALSConfig(iterations=300, cg_steps=0))
    m = missing_weights(np.bincount(train.items, minlength=train.n_items), model.pop_exponent).astype(np.float32)
    glob = fitted.glob.replace(missing_weight=m)
    users = np.unique(train.users)
    sums = {"f": np.zeros_like(glob.item_factors), "gram": np.zeros(16), "curv": np.zeros(train.n_items),
            "counts": np.zeros(train.n_items)}
    for u in users:
        mask = train.users == u
        update, local = local_update(glob, LocalParams.zeros(4), train.items[mask], train.ratings[mask],
                                     model=model, config=LocalConfig(), rng=np.random.default_rng(0))
        np.testing.assert_allclose(local.user_factor, fitted.users.user_factors[u], atol=2e-3)
        sums["f"] += update.item_factors
        sums["gram"] += update.extra[ARRAY_USER_GRAM]
        sums["curv"] += update.extra[ARRAY_ITEM_CURVATURE]
        sums["counts"] += update.counts
    state = ServerState.start(train.n_items, model, FedConfig(server=ServerOptConfig(name="sgd", lr=1.0)),
                              global_mean=0.0)
    state.glob = glob
    extra = {ARRAY_USER_GRAM: sums["gram"], ARRAY_ITEM_CURVATURE: sums["curv"]}
    new = state.apply(RoundSums(sums["f"], np.zeros(train.n_items), sums["counts"], len(users), extra))
    np.testing.assert_allclose(new.item_factors, glob.item_factors, atol=2e-3)
    assert new.missing_weight is not None
    np.testing.assert_allclose(new.missing_weight, m, rtol=1e-5)
    moved = state.apply(RoundSums(sums["f"] + 0.5, np.zeros(train.n_items), sums["counts"], len(users), extra))
    assert np.abs(moved.item_factors - new.item_factors).max() > 1e-2  # the check above can fail


def test_explicit_half_step_is_fold_in_for_every_user() -> None:
    rng = np.random.default_rng(3)
    train = _random_implicit(3)
    ratings = rng.integers(1, 6, len(train)).astype(np.float64)
    model = MFConfig(kind="explicit", dim=3, reg=0.1, bias_reg=0.05)
    mu = float(ratings.mean())
    by_user, _ = _sides(train.users, train.items, (np.ones(len(train)), ratings - mu), train.n_users, train.n_items)
    glob = GlobalParams(rng.normal(0, 0.3, (train.n_items, 3)).astype(np.float32),
                        rng.normal(0, 0.2, train.n_items).astype(np.float32), mu)
    other = torch.cat([torch.from_numpy(glob.item_factors), torch.from_numpy(glob.item_bias)[:, None]], dim=1)
    got = _biased_half(by_user, other, torch.zeros(train.n_users, 4), model, cg_steps=0).numpy()
    for u in np.unique(train.users):
        mask = train.users == u
        want = fold_in(glob, train.items[mask], ratings[mask], reg=model.reg, bias_reg=model.bias_reg)
        np.testing.assert_allclose(got[u, :3], want.user_factor, atol=1e-4)
        assert got[u, 3] == pytest.approx(want.user_bias, abs=1e-4)


def _wrmf_loss(train: Interactions, p: np.ndarray, q: np.ndarray, model: MFConfig) -> float:
    c = np.ones((train.n_users, train.n_items))
    y = np.zeros_like(c)
    c[train.users, train.items] = 1 + model.confidence
    y[train.users, train.items] = 1.0
    return float((c * (y - p @ q.T) ** 2).sum() + model.reg * ((p * p).sum() + (q * q).sum()))


def test_als_sweeps_never_increase_the_wrmf_objective() -> None:
    train = _random_implicit(4)
    values = []
    for sweeps in (1, 2, 4, 8):
        fitted = train_als(train, WRMF, ALSConfig(iterations=sweeps, cg_steps=0))
        values.append(_wrmf_loss(train, fitted.users.user_factors, fitted.glob.item_factors, WRMF))
    assert all(b <= a + 1e-3 for a, b in zip(values, values[1:], strict=False)), values


def test_explicit_als_beats_the_mean_on_synthetic(small_explicit: Dataset) -> None:
    model = MFConfig(kind="explicit", dim=8, reg=0.1, bias_reg=0.1)
    fitted = train_central(small_explicit.train, model, CentralConfig(epochs=10, solver="als"))
    rmse = evaluate(small_explicit, "E1", predict=fitted.predict, score_block=fitted.score_block)["rmse"]
    mu = float(small_explicit.train.ratings.mean())
    base = float(np.sqrt(np.mean((small_explicit.test.ratings - mu) ** 2)))
    assert rmse < 0.95 * base


def test_device_solve_and_server_step_are_als_without_extra_curvature() -> None:
    """With confidence 0 the isotropic curvature is exact, so one full round with step 1 is the ALS item solve."""
    train = _random_implicit(5)
    model = replace(WRMF, confidence=0.0)
    glob = GlobalParams.init(train.n_items, 4, init_std=0.3, seed=1)
    users = np.unique(train.users)
    sums = {"f": np.zeros_like(glob.item_factors), "gram": np.zeros(16), "curv": np.zeros(train.n_items)}
    p_all = np.zeros((train.n_users, 4))
    for u in users:
        mask = train.users == u
        update, local = local_update(glob, LocalParams.zeros(4), train.items[mask], train.ratings[mask],
                                     model=model, config=LocalConfig(), rng=np.random.default_rng(0))
        sums["f"] += update.item_factors
        sums["gram"] += update.extra[ARRAY_USER_GRAM]
        sums["curv"] += update.extra[ARRAY_ITEM_CURVATURE]
        p_all[u] = local.user_factor
    w = np.ones(len(train))
    np.testing.assert_allclose(p_all[users], _dense_user_solve(train, glob.item_factors.astype(np.float64),
                                                               model, w)[users], atol=1e-4)
    state = ServerState.start(train.n_items, model, FedConfig(server=ServerOptConfig(name="sgd", lr=1.0)),
                              global_mean=0.0)
    state.glob = glob
    extra = {ARRAY_USER_GRAM: sums["gram"], ARRAY_ITEM_CURVATURE: sums["curv"]}
    new = state.apply(RoundSums(sums["f"], np.zeros(train.n_items), np.zeros(train.n_items), len(users), extra))
    by_item = _sides(train.items, train.users, (w,), train.n_items, train.n_users)[0]
    p_used = torch.from_numpy(p_all).float()
    want = wrmf_solve(by_item, p_used, torch.zeros(train.n_items, 4), confidence=0.0, reg=model.reg, cg_steps=0)
    np.testing.assert_allclose(new.item_factors, want.numpy(), atol=1e-4)


def test_wrmf_server_refuses_sums_without_its_segments() -> None:
    state = ServerState.start(5, WRMF, FedConfig(), global_mean=0.0)
    with pytest.raises(ConfigError, match="user_gram"):
        state.apply(RoundSums(np.zeros((5, 4)), np.zeros(5), np.zeros(5), 3))


@pytest.mark.slow
def test_federated_wrmf_learns_on_synthetic(small_implicit: Dataset) -> None:
    model = replace(WRMF, dim=8, reg=1.0)
    fed = FedConfig(rounds=6, eval_every=6, server=ServerOptConfig(name="sgd", lr=0.6))
    fed_hr = train_in_process(small_implicit, model, fed)[1][-1]["hr@10"]
    fitted = train_central(small_implicit.train, model, CentralConfig(epochs=6))
    central_hr = evaluate(small_implicit, "R1", predict=fitted.predict, score_block=fitted.score_block)["hr@10"]
    assert fed_hr >= 0.8 * central_hr > 0


def test_run_config_accepts_wrmf_keys() -> None:
    cfg = RunConfig.from_flat({"protocol": "R1", "model.loss": "wrmf", "model.confidence": 20})
    assert cfg.model.loss == "wrmf" and cfg.model.confidence == 20.0
    with pytest.raises(ConfigError, match="model.confidence"):
        RunConfig.from_flat({"protocol": "R1", "model.confidence": -1})


def test_weights_must_match_the_interactions(small_implicit: Dataset) -> None:
    with pytest.raises(ConfigError, match="weights"):
        train_central(small_implicit.train, WRMF, weights=np.ones(3))


def test_weights_raise_confidence_like_repeats() -> None:
    """A weight of 2 on an interaction is the confidence of ``1 + 2 * confidence``: the dense solve agrees."""
    train = _random_implicit(6)
    w = np.where(np.arange(len(train)) % 3 == 0, 2.0, 1.0)
    fitted = train_als(train, WRMF, ALSConfig(iterations=1, cg_steps=0), weights=w)
    q = fitted.glob.item_factors.astype(np.float64)
    by_user, _ = _sides(train.users, train.items, (w,), train.n_users, train.n_items)
    again = wrmf_solve(by_user, torch.from_numpy(q).float(), torch.zeros(train.n_users, 4),
                       confidence=WRMF.confidence, reg=WRMF.reg, cg_steps=0).numpy()
    np.testing.assert_allclose(again, _dense_user_solve(train, q, WRMF, w), atol=2e-4)


@pytest.mark.skipif(importlib.util.find_spec("implicit") is None,
                    reason="peer library 'implicit' not installed (pip install -e .[peers])")
def test_same_objective_as_implicit_als() -> None:
    """fedrec's and implicit's ALS minimise the same objective: their final values are close."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    train = _random_implicit(7, n_users=40, n_items=30, n=300)
    model = replace(WRMF, dim=4, reg=0.5, confidence=5.0)
    ours = train_als(train, model, ALSConfig(iterations=30, cg_steps=0))
    matrix = sp.csr_matrix((np.full(len(train), 6.0, np.float32), (train.users, train.items)),
                           shape=(train.n_users, train.n_items))  # implicit's confidence is alpha * value
    peer = AlternatingLeastSquares(factors=4, regularization=0.5, alpha=1.0, iterations=30, num_threads=1,
                                   random_state=0, use_cg=False)
    peer.fit(matrix, show_progress=False)
    mine = _wrmf_loss(train, ours.users.user_factors, ours.glob.item_factors, model)
    theirs = _wrmf_loss(train, np.asarray(peer.user_factors), np.asarray(peer.item_factors), model)
    assert mine <= 1.02 * theirs and theirs <= 1.02 * mine


@pytest.mark.skipif(importlib.util.find_spec("surprise") is None,
                    reason="peer library 'scikit-surprise' not installed (pip install -e .[peers])")
def test_peer_wrapper_scores_surprise_with_fedrec_metrics(small_explicit: Dataset) -> None:
    from simulations.peers import surprise_svd

    assert small_explicit.rating_scale is not None
    fit = surprise_svd(small_explicit.train, small_explicit.rating_scale, n_epochs=5)
    rmse = evaluate(small_explicit, "E1", predict=fit.predict, score_block=fit.score_block)["rmse"]
    assert fit.seconds > 0 and 0 < rmse < 2.0
