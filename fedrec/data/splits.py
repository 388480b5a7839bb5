"""Train/test splits over one index space.

Every split returns ``(train, test)`` :class:`Interactions` that partition the
input rows exactly and keep ``n_users``/``n_items`` and the id maps, so a model
sized on train can score test. All splits are deterministic (seeded where
random) and work per user, so each user with at least two interactions keeps
at least one in train: a federated client with no training rows could not
learn its user factor.

Hyper-parameters must be chosen on :func:`validation_split` of the train part,
never on test.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.errors import ConfigError

Split = tuple[Interactions, Interactions]


def random_kfold(inter: Interactions, *, k: int = 5, fold: int = 1, seed: int = 0) -> Split:
    """Fold ``fold`` (1-based, like MovieLens ``u1..u5``) of a per-user stratified k-fold.

    Each user's rows are shuffled and dealt round-robin into the ``k`` folds
    from a random starting fold, so every fold holds about ``1/k`` of each
    user's rows and the ``k`` test sets partition the data.
    """
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"k must be an integer >= 2, got {k!r}")
    if not isinstance(fold, int) or not 1 <= fold <= k:
        raise ConfigError(f"fold must be an integer in 1..{k}, got {fold!r}")
    rng = _rng(seed)
    order, pos, _ = _rank_within_user(inter, rng.random(len(inter)))
    offset = rng.integers(0, k, size=inter.n_users)
    fold_of = np.empty(len(inter), dtype=np.int64)
    fold_of[order] = (pos + offset[inter.users[order]]) % k
    return _split(inter, fold_of == fold - 1)


def leave_last_out(inter: Interactions) -> Split:
    """Per user, the latest interaction goes to test.

    "Latest" is the largest ``(timestamp, item index)`` pair, so ties in time
    are broken by the larger item index. Users with a single interaction keep it
    in train.
    """
    return temporal_holdout(inter, n_test=1)


def temporal_holdout(
    inter: Interactions, *, fraction: float | None = None, n_test: int | None = None
) -> Split:
    """Per user, the latest ``ceil(fraction * n_u)`` (or ``n_test``) interactions go to test.

    Ordered by ``(timestamp, item index)`` as in :func:`leave_last_out`; at
    least one interaction per user stays in train.
    """
    keys = (inter.items, inter.timestamps)
    return _holdout(inter, keys, _n_test_rule(fraction, n_test))


def random_holdout(
    inter: Interactions, *, fraction: float | None = 0.2, seed: int = 0, n_test: int | None = None
) -> Split:
    """Per user, a random ``ceil(fraction * n_u)`` (or ``n_test``) of the interactions go to test.

    Give ``n_test=1`` (and no fraction) for a one-per-user random hold-out: the
    ranking protocol for logs without timestamps. Seeded, so reproducible.
    """
    keys = (_rng(seed).random(len(inter)),)
    return _holdout(inter, keys, _n_test_rule(None if n_test is not None else fraction, n_test))


def validation_split(
    train: Interactions,
    *,
    kind: Literal["leave_last_out", "random"] = "leave_last_out",
    fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Carve ``(train', validation)`` out of a training set.

    Why: hyper-parameters tuned on test overstate accuracy; tuning on a split
    of train keeps test untouched. Use ``kind="leave_last_out"`` for ranking
    protocols and ``kind="random"`` (per-user ``fraction``) for rating
    prediction.
    """
    if kind == "leave_last_out":
        return leave_last_out(train)
    if kind == "random":
        return random_holdout(train, fraction=fraction, seed=seed)
    raise ConfigError(f"validation kind {kind!r} invalid; valid: 'leave_last_out', 'random'")


def _n_test_rule(fraction: float | None, n_test: int | None) -> tuple[float | None, int | None]:
    if (fraction is None) == (n_test is None):
        raise ConfigError("give exactly one of fraction and n_test")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction!r}")
    if n_test is not None and (not isinstance(n_test, int) or n_test < 1):
        raise ConfigError(f"n_test must be an integer >= 1, got {n_test!r}")
    return fraction, n_test


def _holdout(
    inter: Interactions, keys: tuple[np.ndarray, ...], rule: tuple[float | None, int | None]
) -> Split:
    """Test = the last rows of each user in ``keys`` order, never all of them."""
    fraction, n_test = rule
    order, pos, sizes = _rank_within_user(inter, *keys)
    if fraction is not None:
        wanted = np.ceil(fraction * sizes - 1e-9).astype(np.int64)
    else:
        wanted = np.full(len(sizes), n_test, dtype=np.int64)
    per_user = np.minimum(wanted, np.maximum(sizes - 1, 0))
    users = inter.users[order]
    mask = np.zeros(len(inter), dtype=bool)
    mask[order] = pos >= sizes[users] - per_user[users]
    return _split(inter, mask)


def _rank_within_user(
    inter: Interactions, *keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by user then by ``keys`` (last key most significant).

    Returns the sorted row order, each sorted row's position within its user,
    and the per-user row counts.
    """
    order = np.lexsort((*keys, inter.users))  # stable: equal keys keep row order
    sizes = np.bincount(inter.users, minlength=inter.n_users)
    starts = np.cumsum(sizes) - sizes
    pos = np.arange(len(inter)) - starts[inter.users[order]]
    return order, pos, sizes


def _split(inter: Interactions, test_mask: np.ndarray) -> Split:
    return inter.subset(~test_mask), inter.subset(test_mask)


def _rng(seed: int) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(seed)


__all__ = [
    "Split",
    "leave_last_out",
    "random_holdout",
    "random_kfold",
    "temporal_holdout",
    "validation_split",
]
