"""Synthetic interactions with known low-rank structure: the built-in default dataset.

Why synthetic: it needs no download, scales from a unit test to a million
simulated devices, and has a ground truth a matrix-factorization model can
recover, so learning failures are visible.

Model
-----
Item side (drawn once from ``default_rng([seed, ITEM_STREAM])``): factors
``q_i``, biases ``b_i`` and a Zipf popularity over a random permutation of the
items. User side, in blocks of ``USER_BLOCK`` users drawn together from
``default_rng([seed, BLOCK_STREAM, block])`` (so user ``u`` depends on nothing
but the seed, its block and the item side, never on ``n_users``): a log-normal
activity ``k_u``, factors ``p_u`` and bias ``b_u``. A block is one vectorised
pass: a million users take seconds, not the minutes of a loop per user.

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

BLOCK_STREAM = 2**63 + 1
"""Entropy word of the user-block streams (``default_rng([seed, BLOCK_STREAM, block])``)."""

USER_BLOCK = 1024
"""Users drawn together from one stream: one vectorised pass per block instead of a loop per user."""

POOL_FACTOR = 8
"""Candidate draws per wanted item; below ``POOL_FACTOR * k`` items the exact full sampler runs."""

FULL_CELLS = 1 << 22
"""Largest users x items block of logits the exact sampler holds at once."""

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

    Memory is the item model plus one block of :data:`USER_BLOCK` users; a
    user's rows are identical whether generated alone (``start=u, stop=u+1``),
    within any stream, or with any ``n_users`` larger than ``u``.
    """
    stop = config.n_users if stop is None else stop
    if not 0 <= start <= stop <= config.n_users:
        raise ConfigError(f"user range [{start}, {stop}) must lie within [0, {config.n_users})")
    model = ItemModel.build(config)
    for block in range(start // USER_BLOCK, (stop + USER_BLOCK - 1) // USER_BLOCK):
        rows = block_rows(config, model, block)
        for user in range(max(start, rows.first), min(stop, rows.first + USER_BLOCK)):
            yield (user, *rows.user(user))


def user_rows(
    config: SyntheticConfig, model: ItemModel, user: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user's ``(items, ratings, timestamps)``, in time order (generates the user's block)."""
    return block_rows(config, model, user // USER_BLOCK).user(user)


def user_factors(config: SyntheticConfig, user: int) -> tuple[np.ndarray, float]:
    """True ``(p_u, b_u)`` of a user: the oracle an evaluation can compare a model against."""
    _, p, b, _ = _block_start(config, user // USER_BLOCK)
    return p[user % USER_BLOCK], float(b[user % USER_BLOCK])


@dataclass(frozen=True)
class BlockRows:
    """The rows of users ``first .. first + USER_BLOCK - 1``, grouped by user, each in time order."""

    first: int
    offsets: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def user(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(items, ratings, timestamps)`` of one user of the block."""
        lo, hi = self.offsets[user - self.first], self.offsets[user - self.first + 1]
        return self.items[lo:hi], self.ratings[lo:hi], self.timestamps[lo:hi]


def _block_start(
    config: SyntheticConfig, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """Activities, factors and biases of a block's users, plus its generator positioned after them.

    A block always draws :data:`USER_BLOCK` users, whatever ``n_users``, so a
    user's rows never depend on how many users follow it.
    """
    rng = np.random.default_rng([config.seed, BLOCK_STREAM, block])
    k = _activity(rng, config, USER_BLOCK)
    p = rng.standard_normal((USER_BLOCK, config.rank)) * config.factor_std
    b = rng.standard_normal(USER_BLOCK) * config.user_bias_std
    return k, p, b, rng


def block_rows(config: SyntheticConfig, model: ItemModel, block: int) -> BlockRows:
    """All rows of one block of users, vectorised over the block (no Python loop per user)."""
    k, p, b_u, rng = _block_start(config, block)
    owners, items = _sample_block(rng, model, k, p if config.implicit else None)
    order = np.argsort(owners + rng.random(len(items)))  # random time order within each user
    owners, items = owners[order], items[order]
    offsets = np.zeros(USER_BLOCK + 1, dtype=np.int64)
    np.cumsum(k, out=offsets[1:])
    noise = rng.standard_normal(len(items)) * config.noise_std
    if config.implicit:
        ratings = np.ones(len(items), dtype=np.float32)
    else:
        affinity = np.einsum("ij,ij->i", model.factors[items], p[owners])
        mean = config.global_mean + b_u[owners] + model.biases[items] + affinity
        ratings = np.clip(np.rint(mean + noise), 1.0, 5.0).astype(np.float32)
    first = config.start_time + rng.integers(0, config.time_span, size=USER_BLOCK)
    gaps = 1 + np.floor(rng.exponential(config.mean_gap, size=len(items))).astype(np.int64)
    gaps[offsets[:-1][k > 0]] = 0
    elapsed = np.cumsum(gaps)
    timestamps = first[owners] + elapsed - elapsed[offsets[owners]]
    return BlockRows(block * USER_BLOCK, offsets, items.astype(np.int64), ratings, timestamps)


def _activity(rng: np.random.Generator, config: SyntheticConfig, size: int) -> np.ndarray:
    """Log-normal activities with mean ``mean_interactions``, clipped to the allowed range."""
    sigma = config.activity_sigma
    draw = config.mean_interactions * np.exp(sigma * rng.standard_normal(size) - sigma * sigma / 2)
    return np.clip(np.rint(draw), config.min_interactions, config.k_max).astype(np.int64)


def _sample_block(
    rng: np.random.Generator, model: ItemModel, k: np.ndarray, p: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``k[u]`` distinct items per user ``u``, probability ``∝ popularity * exp(p_u . q_i)``.

    ``p=None`` samples by popularity alone (explicit feedback). Returns
    ``(owner, item)`` pairs grouped by owner.

    Successive sampling without replacement is Gumbel-top-k on the log weights.
    For a user with ``POOL_FACTOR * k < n_items`` it runs over a candidate pool
    drawn by the alias table from the popularity; each distinct candidate's
    multiplicity stands in for its popularity (sampling-importance-resampling),
    which costs ``O(k log k)`` instead of ``O(n_items)``. Users whose pool has
    fewer than ``2 k`` distinct candidates, and users with ``k`` a sizeable
    fraction of the catalogue, take the exact sampler over all items.
    """
    n_items = model.n_items
    pooled = np.flatnonzero(k * POOL_FACTOR < n_items)
    pool_owners, pool_items, short = _pool_sample(rng, model, k, pooled, p)
    full = np.sort(np.concatenate([np.flatnonzero(k * POOL_FACTOR >= n_items), short]))
    full_owners, full_items = _full_sample(rng, model, k, full, p)
    owners = np.concatenate([pool_owners, full_owners])
    items = np.concatenate([pool_items, full_items])
    order = np.argsort(owners, kind="stable")
    return owners[order], items[order]


def _pool_sample(
    rng: np.random.Generator, model: ItemModel, k: np.ndarray, users: np.ndarray, p: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gumbel-top-k over alias-drawn candidate pools; also returns the users whose pool was too small."""
    n_items = model.n_items
    want = k[users]
    draws = want * POOL_FACTOR
    local = np.repeat(np.arange(len(users)), draws)
    keys, counts = np.unique(local * n_items + model.draw_popular(rng, int(draws.sum())), return_counts=True)
    owner, item = keys // n_items, keys % n_items
    distinct = np.bincount(owner, minlength=len(users))
    logits = np.log(counts.astype(np.float64))
    if p is not None:
        logits += np.einsum("ij,ij->i", model.factors[item], p[users[owner]])
    logits += rng.gumbel(size=len(logits))
    # one float sort instead of a lexsort: owner, then logits descending (arctan maps them into (0, 1))
    order = np.argsort(owner + (0.5 - np.arctan(logits) / np.pi))
    starts = np.zeros(len(users), dtype=np.int64)
    np.cumsum(distinct[:-1], out=starts[1:])
    owner_sorted = owner[order]
    rank = np.arange(len(order)) - starts[owner_sorted]
    ok = distinct >= 2 * want
    keep = order[(rank < want[owner_sorted]) & ok[owner_sorted]]
    return users[owner[keep]], item[keep], users[~ok]


def _full_sample(
    rng: np.random.Generator, model: ItemModel, k: np.ndarray, users: np.ndarray, p: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Gumbel-top-k over the whole catalogue, in chunks of at most ``FULL_CELLS`` logits."""
    n_items = model.n_items
    owners, items = [], []
    step = max(1, FULL_CELLS // n_items)
    for lo in range(0, len(users), step):
        chunk = users[lo : lo + step]
        logits = np.broadcast_to(model.log_popularity, (len(chunk), n_items)).copy()
        if p is not None:
            logits += p[chunk] @ model.factors.T
        logits += rng.gumbel(size=logits.shape)
        ranked = np.argsort(-logits, axis=1)
        take = np.arange(n_items)[None, :] < k[chunk][:, None]
        owners.append(np.repeat(chunk, k[chunk]))
        items.append(ranked[take])
    if not owners:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(owners), np.concatenate(items)


def generate(config: SyntheticConfig) -> Interactions:
    """Materialise all users (rows grouped by user, each user's rows in time order)."""
    model = ItemModel.build(config)
    n_blocks = (config.n_users + USER_BLOCK - 1) // USER_BLOCK
    parts = [block_rows(config, model, block) for block in range(n_blocks)]
    last = config.n_users - (n_blocks - 1) * USER_BLOCK
    ends = [len(part.items) for part in parts[:-1]] + [int(parts[-1].offsets[last])]
    counts = np.concatenate([np.diff(part.offsets) for part in parts])[: config.n_users]
    inter = Interactions.build(
        np.repeat(np.arange(config.n_users, dtype=np.int64), counts),
        np.concatenate([part.items[:end] for part, end in zip(parts, ends, strict=True)]),
        np.concatenate([part.ratings[:end] for part, end in zip(parts, ends, strict=True)]),
        np.concatenate([part.timestamps[:end] for part, end in zip(parts, ends, strict=True)]),
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
