"""The implicit-feedback model: sampled losses, recency weights, negatives and the device step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedrec.data.interactions import Dataset
from fedrec.data.registry import load_dataset
from fedrec.errors import ConfigError
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import FedConfig
from fedrec.metrics.evaluate import evaluate
from fedrec.model.mf import MFConfig, recency_weights
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.train.aggregate import ServerOptConfig
from fedrec.train.central import CentralConfig, _implicit_loss, _init_params, train_central
from fedrec.train.local import LocalConfig, _implicit_grad, local_update, sample_negatives


def _params(n_users: int, n_items: int, dim: int, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    return _init_params(n_users, n_items, MFConfig(kind="implicit", dim=dim, reg=0.1, bias_reg=0.1), seed)


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_central_loss_decreases_under_sgd(loss: str) -> None:
    cfg = MFConfig(kind="implicit", dim=4, reg=0.01, bias_reg=0.01, negatives=4, neg_weight=4.0, loss=loss)
    params = _params(5, 30, 4)
    u = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    i = torch.tensor([3, 7, 11, 3, 20, 5, 9])
    opt = torch.optim.SGD(list(params.values()), lr=0.05)

    def value() -> float:
        return float(_implicit_loss(params, u, i, 30, cfg, torch.Generator().manual_seed(1)).detach())

    before = value()
    for step in range(200):
        opt.zero_grad()
        _implicit_loss(params, u, i, 30, cfg, torch.Generator().manual_seed(step)).backward()
        opt.step()
    assert value() < 0.7 * before


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_central_gradient_raises_positive_and_lowers_negatives(loss: str) -> None:
    cfg = MFConfig(kind="implicit", dim=3, reg=0.0, bias_reg=0.0, negatives=1, neg_weight=1.0, loss=loss)
    params = _params(1, 2, 3, seed=3)
    u, i = torch.tensor([0]), torch.tensor([0])
    seed = next(k for k in range(100)
                if int(torch.randint(0, 2, (1, 1), generator=torch.Generator().manual_seed(k))) == 1)

    def scores() -> tuple[float, float]:
        with torch.no_grad():
            s = params["bi"] + params["Q"] @ params["P"][0] + params["bu"][0]
        return float(s[0]), float(s[1])

    pos0, neg0 = scores()
    loss_value = _implicit_loss(params, u, i, 2, cfg, torch.Generator().manual_seed(seed))
    loss_value.backward()
    with torch.no_grad():
        for p in params.values():
            assert p.grad is not None
            p.sub_(0.1 * p.grad)
    pos1, neg1 = scores()
    assert pos1 > pos0 and neg1 < neg0


@torch.no_grad()
def test_negative_term_is_averaged_and_weighted() -> None:
    params = _params(2, 10, 4, seed=1)
    u, i = torch.tensor([0, 1]), torch.tensor([2, 5])
    base = dict(kind="implicit", dim=4, reg=0.0, bias_reg=0.0, negatives=6)
    one = float(_implicit_loss(params, u, i, 10, MFConfig(**base, neg_weight=1.0),  # type: ignore[arg-type]
                               torch.Generator().manual_seed(7)))
    three = float(_implicit_loss(params, u, i, 10, MFConfig(**base, neg_weight=3.0),  # type: ignore[arg-type]
                                 torch.Generator().manual_seed(7)))
    with torch.no_grad():
        s_pos = params["bu"][u] + params["bi"][i] + (params["P"][u] * params["Q"][i]).sum(1)
    pos_term = float(torch.nn.functional.softplus(-s_pos).sum())
    assert three - pos_term == pytest.approx(3 * (one - pos_term), rel=1e-5)


@torch.no_grad()
def test_positive_weights_scale_each_row() -> None:
    cfg = MFConfig(kind="implicit", dim=4, reg=0.0, bias_reg=0.0, negatives=3)
    params = _params(2, 10, 4, seed=2)
    u, i = torch.tensor([0]), torch.tensor([2])
    plain = float(_implicit_loss(params, u, i, 10, cfg, torch.Generator().manual_seed(0)))
    doubled = float(_implicit_loss(params, u, i, 10, cfg, torch.Generator().manual_seed(0),
                                   torch.tensor([2.0])))
    assert doubled == pytest.approx(2 * plain, rel=1e-5)


def test_recency_weights_count_later_interactions_per_user() -> None:
    cfg = MFConfig(kind="implicit", recency_boost=3.0, recency_scale=1.0, reg=0.1, bias_reg=0.1)
    users = np.array([0, 1, 0, 0, 1])
    items = np.array([5, 3, 2, 9, 1])
    stamps = np.array([10, 5, 10, 3, 6])
    w = recency_weights(users, items, stamps, cfg)
    # user 0: (3, 9) age 2, (10, 2) age 1, (10, 5) age 0 -- equal times ordered by item index
    expected = 1 + 3 * np.exp(-np.array([0.0, 1.0, 1.0, 2.0, 0.0]))
    np.testing.assert_allclose(w, expected)
    one_user = recency_weights(np.zeros(3, np.int64), items[users == 0], stamps[users == 0], cfg)
    np.testing.assert_allclose(one_user, w[users == 0])


def test_recency_weights_are_one_without_boost() -> None:
    w = recency_weights(np.array([0, 0, 1]), np.array([1, 2, 3]), np.array([3, 2, 1]), MFConfig(kind="implicit"))
    np.testing.assert_array_equal(w, np.ones(3))


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"neg_weight": 0.0}, "model.neg-weight"),
    ({"recency_boost": -1.0}, "model.recency-boost"),
    ({"recency_scale": 0.0}, "model.recency-scale"),
    ({"loss": "hinge"}, "model.loss"),
])
def test_implicit_config_rejects(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MFConfig(kind="implicit", **kwargs)


@pytest.mark.parametrize("n_pos", [0, 3, 40, 95])
def test_sample_negatives_never_positive_distinct_and_capped(n_pos: int) -> None:
    rng = np.random.default_rng(n_pos)
    positives = rng.choice(100, size=n_pos, replace=False)
    with_duplicates = np.concatenate([positives, positives[: n_pos // 2]])
    for n in (1, 10, 60, 500):
        neg = sample_negatives(100, with_duplicates, n, rng)
        assert len(neg) == min(n, 100 - n_pos)
        assert len(np.unique(neg)) == len(neg)
        assert not np.isin(neg, positives).any()


@pytest.mark.parametrize("n", [5, 60])
def test_sample_negatives_is_uniform_over_the_rest(n: int) -> None:
    rng = np.random.default_rng(0)
    positives = np.arange(0, 100, 4)
    hits = np.zeros(100)
    draws = 4000
    for _ in range(draws):
        np.add.at(hits, sample_negatives(100, positives, n, rng), 1)
    assert hits[positives].sum() == 0
    rest = np.delete(hits, positives)
    expected = draws * n / len(rest)
    chi2 = float(((rest - expected) ** 2 / expected).sum())
    assert chi2 < 140  # 74 degrees of freedom: p < 1e-5 beyond this


def _table(n_items: int = 40, dim: int = 4, seed: int = 0) -> GlobalParams:
    return GlobalParams.init(n_items, dim, init_std=0.3, seed=seed)


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_device_update_is_zero_outside_positives_and_negatives(loss: str) -> None:
    glob = _table()
    model = MFConfig(kind="implicit", dim=4, negatives=2, neg_weight=2.0, loss=loss, reg=0.1, bias_reg=0.1)
    positives = np.array([1, 7, 30])
    local = LocalParams(np.random.default_rng(1).normal(0, 0.3, 4).astype(np.float32))
    update, _ = local_update(glob, local, positives, np.ones(3), model=model, config=LocalConfig(steps=3, lr=0.1),
                             rng=np.random.default_rng(5))
    negatives = sample_negatives(40, positives, 6, np.random.default_rng(5))
    touched = np.zeros(40, bool)
    touched[positives] = touched[negatives] = True
    assert update.item_factors.shape == glob.item_factors.shape and update.item_bias.shape == (40,)
    np.testing.assert_array_equal(update.counts, touched.astype(np.float32))
    assert not update.item_factors[~touched].any() and not update.item_bias[~touched].any()
    assert np.abs(update.item_factors[positives]).sum() > 0
    assert update.n_rows == 9


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_device_step_raises_positives_above_negatives(loss: str) -> None:
    glob = _table(seed=4)
    model = MFConfig(kind="implicit", dim=4, reg=0.0, bias_reg=0.0, negatives=3, neg_weight=3.0, loss=loss)
    positives = np.array([2, 3, 5, 8])
    local = LocalParams(np.random.default_rng(2).normal(0, 0.3, 4).astype(np.float32))
    update, new_local = local_update(glob, local, positives, np.ones(4), model=model,
                                     config=LocalConfig(steps=20, lr=0.2, user_lr=0.5), rng=np.random.default_rng(0))
    moved = glob.replace(item_factors=glob.item_factors + update.item_factors,
                         item_bias=glob.item_bias + update.item_bias)

    def margin(table: GlobalParams, user: LocalParams) -> float:
        s = table.item_bias + table.item_factors @ user.user_factor
        rest = np.setdiff1d(np.arange(table.n_items), positives)
        return float(s[positives].mean() - s[rest].mean())

    assert margin(moved, new_local) > margin(glob, local) + 0.5


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_device_gradient_matches_its_loss(loss: str) -> None:
    rng = np.random.default_rng(3)
    n_pos, n_neg = 3, 7
    s = rng.normal(0, 1, n_pos + n_neg)
    weights = rng.uniform(1, 3, n_pos)
    pair_pos = np.arange(n_neg) % n_pos
    neg_w = 2.0 * weights.sum() / n_neg
    pair_w = 2.0 * weights[pair_pos] * n_pos / n_neg
    g, _ = _implicit_grad(s, n_pos, weights, neg_w, pair_pos, pair_w, loss)
    total = weights.sum()
    eps = 1e-6
    for k in range(len(s)):
        hi, lo = s.copy(), s.copy()
        hi[k] += eps
        lo[k] -= eps
        numeric = (_implicit_grad(hi, n_pos, weights, neg_w, pair_pos, pair_w, loss)[1]
                   - _implicit_grad(lo, n_pos, weights, neg_w, pair_pos, pair_w, loss)[1]) * total / (2 * eps)
        assert g[k] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_device_recency_weights_follow_timestamps() -> None:
    glob = _table(seed=6)
    model = MFConfig(kind="implicit", dim=4, reg=0.0, bias_reg=0.0, negatives=1, neg_weight=1.0,
                     recency_boost=9.0, recency_scale=0.5)
    positives = np.array([4, 9])
    local = LocalParams(np.random.default_rng(2).normal(0, 0.3, 4).astype(np.float32))
    args = dict(model=model, config=LocalConfig(steps=1, lr=0.1, user_lr=0.0))
    plain, _ = local_update(glob, local, positives, np.ones(2), rng=np.random.default_rng(0), **args)  # type: ignore[arg-type]
    late_9, _ = local_update(glob, local, positives, np.ones(2), rng=np.random.default_rng(0),
                             timestamps=np.array([1, 2]), **args)  # type: ignore[arg-type]
    late_4, _ = local_update(glob, local, positives, np.ones(2), rng=np.random.default_rng(0),
                             timestamps=np.array([2, 1]), **args)  # type: ignore[arg-type]
    latest, second = 1 + 9.0, 1 + 9.0 * np.exp(-1 / 0.5)
    assert late_9.item_bias[9] == pytest.approx(latest * plain.item_bias[9], rel=1e-4)
    assert late_9.item_bias[4] == pytest.approx(second * plain.item_bias[4], rel=1e-4)
    assert late_4.item_bias[4] == pytest.approx(latest * plain.item_bias[4], rel=1e-4)


def test_recency_weighted_model_learns_synthetic_ranking() -> None:
    data = load_dataset("synthetic", protocol="R1")
    model = MFConfig(kind="implicit", dim=8, reg=0.01, bias_reg=0.01, negatives=8, neg_weight=16.0,
                     recency_boost=2.0)
    fitted = train_central(data.train, model, CentralConfig(epochs=2, lr=0.01, batch_size=1024))
    hr = evaluate(data, "R1", predict=fitted.predict, score_block=fitted.score_block)["hr@10"]
    assert hr > 2 * 10 / data.n_items


def test_reference_loop_hands_each_device_its_timestamps(small_implicit: Dataset) -> None:
    fed = FedConfig(rounds=2, eval_every=2, local=LocalConfig(steps=2, lr=0.3, user_lr=1.0),
                    server=ServerOptConfig(name="adam", lr=0.05))
    base = dict(kind="implicit", dim=4, reg=0.01, bias_reg=0.01, negatives=4, neg_weight=8.0)
    stamps = small_implicit.train.timestamps
    reversed_time = Dataset(small_implicit.name, replace(small_implicit.train, timestamps=stamps.max() - stamps),
                            small_implicit.test, None)
    plain, _ = train_in_process(small_implicit, MFConfig(**base), fed)  # type: ignore[arg-type]
    recent, history = train_in_process(small_implicit, MFConfig(**base, recency_boost=4.0), fed)  # type: ignore[arg-type]
    flipped, _ = train_in_process(reversed_time, MFConfig(**base, recency_boost=4.0), fed)  # type: ignore[arg-type]
    assert not np.allclose(plain.glob.item_factors, recent.glob.item_factors)
    assert not np.allclose(recent.glob.item_factors, flipped.glob.item_factors)
    assert history[-1]["hr@10"] > 2 * 10 / small_implicit.n_items
