"""Synthetic interactions with known low-rank structure: the built-in default dataset.

Why synthetic: it needs no download, scales from a unit test to a million
simulated devices, and has a ground truth a matrix-factorization model can
recover, so learning failures are visible.

Model
-----
Item side (drawn once from ``default_rng([seed, ITEM_STREAM])``): factors
``q_i``, biases ``b_i`` and a Zipf popularity over a random permutation of the
items. User side (drawn from ``default_rng([seed, u])``, so user ``u`` depends
on nothing but the seed and the item side): a log-normal activity ``k_u``,
factors ``p_u`` and bias ``b_u``.

* Explicit: ``k_u`` items sampled without replacement by popularity; rating
  ``clip(round(mu + b_u + b_i + p_u . q_i + noise), 1, 5)``.
* Implicit: items sampled without replacement with probability proportional to
  ``popularity * exp(p_u . q_i)``; ratings ``1.0``.

Factor scales are set so ``p_u . q_i`` has standard deviation ``signal_std``
whatever the rank. Sampling costs ``O(k_u log k_u)`` per user (alias-table
candidates, then Gumbel-top-k over the candidates), never a pass over all
items unless ``k_u`` is a sizeable fraction of them, so millions of users over
100k items stream without a dense matrix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from fedrec.data.interactions import Dataset, IdMap, Interactions
from fedrec.errors import ConfigError

logger = logging.getLogger(__name__)

ITEM_STREAM = 2**63
"""Entropy word of the item-side random stream; user indices never reach it."""

POOL_FACTOR = 8
"""Candidate draws per wanted item; below ``POOL_FACTOR * k`` items the exact full sampler runs."""

_MAX_POOL_ROUNDS = 4

UserRows = tuple[int, np.ndarray, np.ndarray, np.ndarray]
"""``(user_index, items int64, ratings float32, timestamps int64)`` of one user."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic generator (all validated, ``ConfigError`` names the field).

    Attributes
    ----------
    n_users, n_items, rank:
        Sizes; ``rank`` is the true latent dimension.
    mean_interactions, min_interactions, max_interactions:
        Per-user activity: log-normal with this mean (before clipping), clipped
        to ``[min, max]``; ``max_interactions=None`` means ``n_items``.
    zipf_exponent:
        Item popularity ``∝ rank^-s`` (0 = uniform).
    activity_sigma:
        Log-normal sigma of user activity (heavy tail of very active users).
    signal_std:
        Standard deviation of the affinity ``p_u . q_i``.
    user_bias_std, item_bias_std, global_mean, noise_std:
        Explicit-rating model terms (on the 1..5 scale, before rounding).
    implicit:
        Implicit feedback (affinity-driven item choice, ratings 1.0).
    seed:
        Non-negative integer; same seed, same data.
    start_time, time_span, mean_gap:
        Timestamps: a user's first interaction is uniform in
        ``[start_time, start_time + time_span)``, later ones follow with
        exponential gaps of mean ``mean_gap`` seconds (strictly increasing).
    """

    n_users: int = 2000
    n_items: int = 500
    rank: int = 8
    mean_interactions: float = 40.0
    min_interactions: int = 5
    max_interactions: int | None = None
    zipf_exponent: float = 1.0
    activity_sigma: float = 0.8
    signal_std: float = 1.0
    user_bias_std: float = 0.4
    item_bias_std: float = 0.4
    global_mean: float = 3.5
    noise_std: float = 0.4
    implicit: bool = False
    seed: int = 0
    start_time: int = 1_262_304_000
    time_span: int = 2 * 365 * 86_400
    mean_gap: float = 86_400.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "implicit":
                if not isinstance(value, bool):
                    raise ConfigError(f"synthetic.implicit must be a bool, got {value!r}")
            elif f.name == "max_interactions" and value is None:
                continue
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"synthetic.{f.name} must be a finite number, got {value!r}")
        _require_int(self, "n_users", 1)
        _require_int(self, "n_items", 2)
        _require_int(self, "rank", 1)
        _require_int(self, "min_interactions", 1)
        _require_int(self, "seed", 0)
        _require_int(self, "start_time", 0)
        _require_int(self, "time_span", 1)
        if self.max_interactions is not None:
            _require_int(self, "max_interactions", self.min_interactions)
        if self.min_interactions > self.n_items:
            raise ConfigError(
                f"synthetic.min_interactions ({self.min_interactions}) must not exceed "
                f"n_items ({self.n_items})"
            )
        if self.mean_interactions < self.min_interactions:
            raise ConfigError(
                f"synthetic.mean_interactions ({self.mean_interactions}) must be >= "
                f"min_interactions ({self.min_interactions})"
            )
        for name in (
            "zipf_exponent",
            "activity_sigma",
            "signal_std",
            "user_bias_std",
            "item_bias_std",
            "noise_std",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"synthetic.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.mean_gap <= 0:
            raise ConfigError(f"synthetic.mean_gap must be > 0, got {self.mean_gap!r}")

    @property
    def k_max(self) -> int:
        """Largest number of interactions of one user."""
        cap = self.n_items if self.max_interactions is None else self.max_interactions
        return min(cap, self.n_items)

    @property
    def factor_std(self) -> float:
        """Per-coordinate factor scale giving ``std(p_u . q_i) == signal_std``."""
        return float((self.signal_std**2 / self.rank) ** 0.25)


def _require_int(config: SyntheticConfig, name: str, low: int) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or value < low:
        raise ConfigError(f"synthetic.{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class ItemModel:
    """The item side of the generator, shared by all users (``O(n_items * rank)``).

    Attributes
    ----------
    factors:
        ``(n_items, rank)`` true item factors ``q_i``.
    biases:
        ``(n_items,)`` true item biases ``b_i``.
    log_popularity:
        ``(n_items,)`` log of the (unnormalised) Zipf popularity.
    alias_prob, alias_index:
        Walker alias table of the popularity distribution: one draw costs one
        uniform and one or two table reads, where inverse-CDF sampling would
        binary-search a table too large to stay in cache.
    """

    factors: np.ndarray
    biases: np.ndarray
    log_popularity: np.ndarray
    alias_prob: np.ndarray
    alias_index: np.ndarray

    @classmethod
    def build(cls, config: SyntheticConfig) -> ItemModel:
        """Draw the item side from its own stream (independent of every user)."""
        rng = np.random.default_rng([config.seed, ITEM_STREAM])
        factors = rng.standard_normal((config.n_items, config.rank)) * config.factor_std
        biases = rng.standard_normal(config.n_items) * config.item_bias_std
        ranks = np.empty(config.n_items, dtype=np.float64)
        ranks[rng.permutation(config.n_items)] = np.arange(1, config.n_items + 1)
        log_popularity = -config.zipf_exponent * np.log(ranks)
        alias_prob, alias_index = _alias_table(np.exp(log_popularity - log_popularity.max()))
        return cls(factors, biases, log_popularity, alias_prob, alias_index)

    @property
    def n_items(self) -> int:
        return len(self.biases)

    def draw_popular(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` items drawn with replacement, probability ``∝ popularity``."""
        scaled = rng.random(size) * self.n_items
        slot = np.minimum(scaled.astype(np.int64), self.n_items - 1)
        keep = (scaled - slot) < self.alias_prob[slot]
        return np.where(keep, slot, self.alias_index[slot])


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method: ``O(n)`` construction, ``O(1)`` sampling."""
    n = len(weights)
    scaled = (weights * (n / weights.sum())).tolist()
    prob = [1.0] * n
    alias = list(range(n))
    small = [i for i, w in enumerate(scaled) if w < 1.0]
    large = [i for i, w in enumerate(scaled) if w >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] += scaled[s] - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    return np.asarray(prob, dtype=np.float64), np.asarray(alias, dtype=np.int64)


def iter_users(
    config: SyntheticConfig, *, start: int = 0, stop: int | None = None
) -> Iterator[UserRows]:
    """Stream users ``start..stop-1`` as ``(user, items, ratings, timestamps)``.

    Memory is the item model plus one user; a user's rows are identical whether
    generated alone (``start=u, stop=u+1``) or within any stream.
    """
    stop = config.n_users if stop is None else stop
    if not 0 <= start <= stop <= config.n_users:
        raise ConfigError(f"user range [{start}, {stop}) must lie within [0, {config.n_users})")
    model = ItemModel.build(config)
    for user in range(start, stop):
        items, ratings, timestamps = user_rows(config, model, user)
        yield user, items, ratings, timestamps


def user_factors(config: SyntheticConfig, user: int) -> tuple[np.ndarray, float]:
    """True ``(p_u, b_u)`` of a user: the oracle an evaluation can compare a model against."""
    _, p_u, b_u, _ = _user_start(config, user)
    return p_u, b_u


def _user_start(
    config: SyntheticConfig, user: int
) -> tuple[int, np.ndarray, float, np.random.Generator]:
    """Activity, factors and bias of a user, plus its generator positioned after them."""
    rng = np.random.default_rng([config.seed, user])
    k = _activity(rng, config)
    p_u = rng.standard_normal(config.rank) * config.factor_std
    b_u = float(rng.standard_normal() * config.user_bias_std)
    return k, p_u, b_u, rng


def user_rows(
    config: SyntheticConfig, model: ItemModel, user: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user's ``(items, ratings, timestamps)``, in time order."""
    k, p_u, b_u, rng = _user_start(config, user)
    chosen = _sample_items(rng, model, k, p_u if config.implicit else None)
    items = rng.permutation(np.sort(chosen))
    noise = rng.standard_normal(k) * config.noise_std
    if config.implicit:
        ratings = np.ones(k, dtype=np.float32)
    else:
        mean = config.global_mean + b_u + model.biases[items] + model.factors[items] @ p_u
        ratings = np.clip(np.rint(mean + noise), 1.0, 5.0).astype(np.float32)
    first = config.start_time + int(rng.integers(0, config.time_span))
    gaps = 1 + np.floor(rng.exponential(config.mean_gap, size=k)).astype(np.int64)
    gaps[0] = 0
    timestamps = first + np.cumsum(gaps)
    return items.astype(np.int64), ratings, timestamps


def _activity(rng: np.random.Generator, config: SyntheticConfig) -> int:
    """Log-normal activity with mean ``mean_interactions``, clipped to the allowed range."""
    sigma = config.activity_sigma
    draw = config.mean_interactions * math.exp(sigma * rng.standard_normal() - sigma * sigma / 2)
    return int(min(max(round(draw), config.min_interactions), config.k_max))


def _sample_items(
    rng: np.random.Generator, model: ItemModel, k: int, p_u: np.ndarray | None
) -> np.ndarray:
    """``k`` distinct items drawn with probability ``∝ popularity * exp(p_u . q_i)``.

    ``p_u=None`` samples by popularity alone (explicit feedback).

    Successive sampling without replacement is Gumbel-top-k on the log weights.
    For large catalogues the Gumbel-top-k runs over a candidate pool drawn by
    the alias table from the popularity; each distinct candidate's multiplicity
    stands in for its popularity (sampling-importance-resampling), which costs
    ``O(k log k)`` instead of ``O(n_items)``.
    """
    n_items = model.n_items
    if k * POOL_FACTOR < n_items:
        draws = POOL_FACTOR * k
        pool = model.draw_popular(rng, draws)
        for _ in range(_MAX_POOL_ROUNDS):
            candidates, counts = np.unique(pool, return_counts=True)
            if len(candidates) >= 2 * k:
                logits = np.log(counts.astype(np.float64))
                if p_u is not None:
                    logits += model.factors[candidates] @ p_u
                return np.asarray(candidates[_gumbel_top_k(rng, logits, k)])
            pool = np.concatenate([pool, model.draw_popular(rng, draws)])
            draws *= 2
    logits = model.log_popularity.copy()
    if p_u is not None:
        logits += model.factors @ p_u
    return _gumbel_top_k(rng, logits, k)


def _gumbel_top_k(rng: np.random.Generator, logits: np.ndarray, k: int) -> np.ndarray:
    keys = logits + rng.gumbel(size=len(logits))
    if k >= len(keys):
        return np.arange(len(keys))
    return np.argpartition(-keys, k - 1)[:k]


def generate(config: SyntheticConfig) -> Interactions:
    """Materialise all users (rows grouped by user, each user's rows in time order)."""
    users, items, ratings, timestamps = [], [], [], []
    for user, its, rs, ts in iter_users(config):
        users.append(np.full(len(its), user, dtype=np.int64))
        items.append(its)
        ratings.append(rs)
        timestamps.append(ts)
    inter = Interactions.build(
        np.concatenate(users),
        np.concatenate(items),
        np.concatenate(ratings),
        np.concatenate(timestamps),
        n_users=config.n_users,
        n_items=config.n_items,
        user_ids=IdMap.range(config.n_users),
        item_ids=IdMap.range(config.n_items),
    )
    logger.info(
        "synthetic: %d users, %d items, %d interactions (%s)",
        config.n_users,
        config.n_items,
        len(inter),
        "implicit" if config.implicit else "explicit",
    )
    return inter


def synthetic_dataset(
    config: SyntheticConfig | None = None,
    protocol: Literal["E1", "R1"] = "E1",
    *,
    fold: int = 1,
    k: int = 5,
) -> Dataset:
    """A train/test :class:`Dataset` of synthetic data under a protocol.

    ``E1`` (rating prediction, explicit config only): per-user random k-fold,
    fold ``fold`` (default 80/20). ``R1`` (ranking): interactions as implicit,
    per-user leave-last-out test.
    """
    from fedrec.data.splits import leave_last_out, random_kfold

    config = config or SyntheticConfig()
    inter = generate(config)
    if protocol == "E1":
        if config.implicit:
            raise ConfigError(
                "protocol E1 predicts ratings; the synthetic config is implicit "
                "(set implicit=False or use protocol R1)"
            )
        train, test = random_kfold(inter, k=k, fold=fold, seed=config.seed)
        return Dataset("synthetic", train, test, rating_scale=(1.0, 5.0))
    if protocol == "R1":
        train, test = leave_last_out(inter.with_ratings(np.ones(len(inter), np.float32)))
        return Dataset("synthetic", train, test, rating_scale=None)
    raise ConfigError(f"protocol {protocol!r} invalid; valid: 'E1', 'R1'")
