"""Streaming fold-in: the user's factor follows every interaction, no round needed.

Each recorded interaction re-solves the user's ridge problem in closed form
against the current item table (:func:`fedrec.train.foldin.fold_in`): one
``(d+1) x (d+1)`` solve, well under a millisecond for a device's history. A
brand-new user with a handful of ratings gets a personal factor at once
(cold start); with none, the zero factor scores items by bias (popularity).

The fold-in's penalty grows with the number of ratings ``n`` (as in
training); for a user with very few ratings it is computed as if they had
``prior_count`` (a pseudo-count pulling the factor towards the prior mean), so
one rating cannot swing the factor to an extreme: measured on ML-100K's
held-out users (README, "App SDK").

A re-rated item counts once, with its latest value. An implicit event (a
view, a play) counts as a rating of ``implicit_rating``, the top of the scale
by default: it says the user chose the item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.model.params import GlobalParams, LocalParams
from fedrec.train.foldin import fold_in


@dataclass(frozen=True)
class FoldInConfig:
    """Penalties of the fold-in solve (the model's) and the value of an implicit event."""

    reg: float = 0.1
    bias_reg: float = 0.1
    implicit_rating: float = 5.0
    prior_count: int = 5


def latest_per_item(items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per item, its last value (rows in recording order)."""
    if len(items) == 0:
        return items.astype(np.int64), values.astype(np.float32)
    rev_items = items[::-1]
    uniq, first = np.unique(rev_items, return_index=True)
    return uniq.astype(np.int64), values[::-1][first].astype(np.float32)


def user_factor(glob: GlobalParams, items: np.ndarray, values: np.ndarray, implicit: np.ndarray, *,
                config: FoldInConfig) -> LocalParams:
    """The user's factor folded in against ``glob`` from their whole history."""
    keep = items < glob.n_items  # an item the current model does not know cannot be scored
    ratings = np.where(implicit[keep], np.float32(config.implicit_rating), values[keep])
    uniq, last = latest_per_item(items[keep], ratings)
    boost = max(1.0, config.prior_count / max(len(uniq), 1))
    return fold_in(glob, uniq, last, reg=config.reg * boost, bias_reg=config.bias_reg * boost)
