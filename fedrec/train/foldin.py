"""Closed-form fold-in: the best user factor for a fixed item table.

Solving the user's ridge problem exactly is cheap on a device (one
``(d+1) x (d+1)`` solve), needs no round, and gives cold-start users an embedding
from their very first interactions. It is also the first half of each federated
local step: the device re-solves ``p_u`` against the latest global table, so its
private state is never stale, then improves the item rows it touched.
"""

from __future__ import annotations

import numpy as np

from fedrec.model.params import GlobalParams, LocalParams


def fold_in(glob: GlobalParams, items: np.ndarray, ratings: np.ndarray, *, reg: float,
            bias_reg: float) -> LocalParams:
    """Minimise ``sum_i (r_i - mu - b_i - b_u - p.q_i)^2 + n (reg |p|^2 + bias_reg b_u^2)``.

    The penalty scales with the user's number of ratings ``n``, matching the
    per-rating regularisation used by the SGD trainers. A user with no ratings
    gets the zero vector (the prior mean), so a brand-new user is scored by
    item popularity alone.
    """
    dim = glob.dim
    n = len(items)
    if n == 0:
        return LocalParams.zeros(dim)
    x = np.empty((n, dim + 1), np.float64)
    x[:, :dim] = glob.item_factors[items]
    x[:, dim] = 1.0
    y = np.asarray(ratings, np.float64) - glob.global_mean - glob.item_bias[items]
    a = x.T @ x
    a[np.arange(dim), np.arange(dim)] += n * reg
    a[dim, dim] += n * bias_reg
    sol = np.linalg.solve(a, x.T @ y)
    return LocalParams(sol[:dim].astype(np.float32), float(sol[dim]))
