"""Synthetic generator: validation, determinism, per-user independence, structure, learnability."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.interactions import Interactions
from fedrec.data.synthetic import (
    ItemModel,
    SyntheticConfig,
    generate,
    iter_users,
    synthetic_dataset,
    user_factors,
)
from fedrec.errors import ConfigError

SMALL = SyntheticConfig(n_users=200, n_items=120, mean_interactions=20)


def _same(a: Interactions, b: Interactions) -> bool:
    return all(
        np.array_equal(getattr(a, c), getattr(b, c))
        for c in ("users", "items", "ratings", "timestamps")
    )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n_users", 0, "synthetic.n_users must be an integer >= 1"),
        ("n_items", 1, "synthetic.n_items must be an integer >= 2"),
        ("rank", 2.5, "synthetic.rank must be an integer >= 1"),
        ("seed", -1, "synthetic.seed must be an integer >= 0"),
        ("min_interactions", 600, r"synthetic.min_interactions \(600\) must not exceed n_items"),
        ("mean_interactions", 2.0, "synthetic.mean_interactions"),
        ("max_interactions", 3, "synthetic.max_interactions must be an integer >= 5"),
        ("zipf_exponent", -0.1, "synthetic.zipf_exponent must be >= 0"),
        ("noise_std", float("nan"), "synthetic.noise_std must be a finite number"),
        ("implicit", 1, "synthetic.implicit must be a bool"),
        ("mean_gap", 0.0, "synthetic.mean_gap must be > 0"),
        ("n_users", "10", "synthetic.n_users must be a finite number"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SyntheticConfig(**{field: value})  # type: ignore[arg-type]


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert _same(a, b)
    assert not _same(a, generate(dataclasses.replace(SMALL, seed=1)))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 399), st.integers(0, 3), st.booleans())
def test_user_rows_do_not_depend_on_the_stream(user: int, seed: int, implicit: bool) -> None:
    config = SyntheticConfig(n_users=400, n_items=300, seed=seed, implicit=implicit)
    alone = next(iter_users(config, start=user, stop=user + 1))
    bigger = dataclasses.replace(config, n_users=10_000)
    within = list(iter_users(bigger, start=max(0, user - 2), stop=user + 3))
    match = [rows for rows in within if rows[0] == user][0]
    assert alone[0] == user
    for x, y in zip(alone[1:], match[1:], strict=True):
        assert np.array_equal(x, y)


def test_rows_are_well_formed() -> None:
    inter = generate(SMALL)
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    assert inter.ratings.dtype == np.float32 and inter.timestamps.dtype == np.int64
    assert set(np.unique(inter.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    counts = np.bincount(inter.users, minlength=SMALL.n_users)
    assert counts.min() >= SMALL.min_interactions and counts.max() <= SMALL.n_items
    many = np.bincount(generate(dataclasses.replace(SMALL, n_users=3000)).users)
    assert 0.9 * SMALL.mean_interactions < many.mean() < 1.1 * SMALL.mean_interactions
    for u in range(0, SMALL.n_users, 17):
        rows = inter.users == u
        assert len(np.unique(inter.items[rows])) == rows.sum()  # without replacement
        assert np.all(np.diff(inter.timestamps[rows]) > 0)  # strictly increasing in time


def test_popularity_follows_zipf_and_activity_is_heavy_tailed() -> None:
    config = SyntheticConfig(n_users=1000, n_items=2000, mean_interactions=30, activity_sigma=1.0)
    inter = generate(config)
    model = ItemModel.build(config)
    by_popularity = np.argsort(-model.log_popularity)
    freq = np.bincount(inter.items, minlength=config.n_items)[by_popularity]
    assert freq[:200].sum() > 10 * freq[-200:].sum()
    counts = np.bincount(inter.users)
    assert counts.max() > 5 * np.median(counts)


def test_implicit_choice_follows_affinity() -> None:
    config = SyntheticConfig(n_users=300, n_items=5000, implicit=True, seed=3)
    model = ItemModel.build(config)
    chosen, random = [], []
    rng = np.random.default_rng(0)
    for user, items, ratings, _ in iter_users(config):
        assert np.all(ratings == 1.0)
        p_u, _ = user_factors(config, user)
        chosen.append(np.mean(model.factors[items] @ p_u))
        random.append(np.mean(model.factors[rng.integers(0, config.n_items, len(items))] @ p_u))
    assert np.mean(chosen) > np.mean(random) + 0.5 * config.signal_std


def test_large_catalogue_streams_without_dense_matrix() -> None:
    config = SyntheticConfig(n_users=1_000_000, n_items=100_000, implicit=True)
    start = time.perf_counter()
    rows = list(iter_users(config, start=999_800))
    assert time.perf_counter() - start < 5.0
    assert [r[0] for r in rows] == list(range(999_800, 1_000_000))
    assert all(len(np.unique(r[1])) == len(r[1]) for r in rows)
    assert max(int(r[1].max()) for r in rows) < config.n_items


def _als_rmse(
    train: Interactions, test: Interactions, rank: int, iters: int = 6, reg: float = 2.0
) -> float:
    """Biased alternating least squares: a quick check that the low-rank signal is learnable."""
    rng = np.random.default_rng(0)
    mu = float(train.ratings.mean())
    p = np.hstack([rng.normal(0, 0.1, (train.n_users, rank)), np.zeros((train.n_users, 1))])
    q = np.hstack([rng.normal(0, 0.1, (train.n_items, rank)), np.zeros((train.n_items, 1))])

    def solve(
        rows: np.ndarray, n: int, other: np.ndarray, other_rows: np.ndarray, target: np.ndarray
    ) -> np.ndarray:
        x = np.hstack([other[other_rows, :rank], np.ones((len(rows), 1))])
        order = np.argsort(rows, kind="stable")
        starts = np.searchsorted(rows[order], np.arange(n))
        present = np.bincount(rows, minlength=n) > 0
        outer = np.einsum("ni,nj->nij", x[order], x[order])
        a = np.add.reduceat(outer, starts[present]) + reg * np.eye(rank + 1)
        b = np.add.reduceat(x[order] * target[order, None], starts[present])
        result = np.zeros((n, rank + 1))
        result[present] = np.linalg.solve(a, b[..., None])[..., 0]
        return result

    y = train.ratings.astype(np.float64) - mu
    for _ in range(iters):
        p = solve(train.users, train.n_users, q, train.items, y - q[train.items, rank])
        q = solve(train.items, train.n_items, p, train.users, y - p[train.users, rank])
    pred = mu + np.sum(p[test.users, :rank] * q[test.items, :rank], 1)
    pred += p[test.users, rank] + q[test.items, rank]
    return float(np.sqrt(np.mean((np.clip(pred, 1, 5) - test.ratings) ** 2)))


def test_explicit_data_is_learnable_far_beyond_the_global_mean() -> None:
    config = SyntheticConfig(n_users=1000, n_items=300)
    ds = synthetic_dataset(config, "E1")
    base = float(np.sqrt(np.mean((ds.test.ratings - ds.train.ratings.mean()) ** 2)))
    ratio = _als_rmse(ds.train, ds.test, rank=config.rank) / base
    assert ratio < 0.7, f"MF/global-mean RMSE ratio {ratio:.3f}"


def test_synthetic_dataset_protocols() -> None:
    e1 = synthetic_dataset(SMALL, "E1")
    assert e1.rating_scale == (1.0, 5.0) and e1.n_users == SMALL.n_users
    assert 0.17 < len(e1.test) / (len(e1.train) + len(e1.test)) < 0.23
    r1 = synthetic_dataset(SMALL, "R1")
    assert r1.rating_scale is None and len(r1.test) == SMALL.n_users
    assert np.all(r1.train.ratings == 1.0) and np.all(r1.test.ratings == 1.0)
    with pytest.raises(ConfigError, match="protocol E1 predicts ratings"):
        synthetic_dataset(dataclasses.replace(SMALL, implicit=True), "E1")
    with pytest.raises(ConfigError, match="protocol 'X' invalid"):
        synthetic_dataset(SMALL, "X")  # type: ignore[arg-type]


def test_iter_users_range_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"user range \[5, 300\) must lie within \[0, 200\)"):
        list(iter_users(SMALL, start=5, stop=300))


def test_alias_table_draws_by_popularity() -> None:
    model = ItemModel.build(SyntheticConfig(n_items=300, zipf_exponent=1.2))
    weights = np.exp(model.log_popularity)
    weights /= weights.sum()
    draws = model.draw_popular(np.random.default_rng(0), 400_000)
    freq = np.bincount(draws, minlength=300) / len(draws)
    assert np.abs(freq - weights).max() < 0.003


@pytest.mark.parametrize("implicit", [False, True])
def test_candidate_pool_matches_exact_sampler(
    implicit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SyntheticConfig(
        n_users=1500, n_items=2000, mean_interactions=20, activity_sigma=0.0, implicit=implicit
    )
    order = np.argsort(-ItemModel.build(config).log_popularity)
    buckets = [(0, 10), (10, 100), (100, 500), (500, 2000)]

    def shares() -> np.ndarray:
        inter = generate(config)
        freq = np.bincount(inter.items, minlength=config.n_items)[order]
        return np.array([freq[a:b].sum() for a, b in buckets]) / len(inter)

    pooled = shares()
    monkeypatch.setattr("fedrec.data.synthetic.POOL_FACTOR", 10**9)  # force the full sampler
    exact = shares()
    assert np.abs(pooled - exact).max() < 0.03
