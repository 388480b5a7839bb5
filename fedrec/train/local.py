"""The device's local training step and the update it produces.

A device holds the global item table (downloaded whole, so the download says
nothing about the user), its own LOCAL parameters and its interactions. It
trains on the rows of the table it touched and returns a :class:`LocalUpdate`
whose arrays are DENSE over the whole catalogue: zeros where it has no data, so
that once masked by secure aggregation nobody can tell which items it touched.

Explicit (ratings): the user factor is first re-solved in closed form against
the current table (:func:`fold_in`), then ``steps`` full-batch gradient steps
move the touched item rows (and refine the user factor). Implicit: the user's
positives plus uniformly sampled negatives form the touched rows; ``steps``
gradient steps of the model's implicit loss (logistic or BPR, negatives and
recency weighted as :class:`~fedrec.model.mf.MFConfig` says) move the user
factor and those rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec import flatconfig as fc
from fedrec.errors import ConfigError
from fedrec.model.mf import MFConfig, recency_weights
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.train.foldin import fold_in
from fedrec.wire import ARRAY_COUNTS, ARRAY_ITEM_BIAS, ARRAY_ITEM_CURVATURE, ARRAY_ITEM_FACTORS, ARRAY_USER_GRAM


@dataclass(frozen=True)
class LocalConfig:
    """Settings of one local step (``local.*`` of the run configuration every device holds).

    Attributes
    ----------
    steps:
        Full-batch gradient steps on the device per round.
    lr:
        Step size for the touched item rows (per-row gradient).
    user_lr:
        Step size for the user's own factor (gradient averaged over its rows).
    fold_in:
        Re-solve the user factor in closed form before the steps (explicit only).
    """

    steps: int = 10
    lr: float = 0.05
    user_lr: float = 0.05
    fold_in: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"local.steps: must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"local.lr: must be > 0, got {self.lr}")
        if self.user_lr < 0:
            raise ConfigError(f"local.user-lr: must be >= 0, got {self.user_lr}")

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> LocalConfig:
        """The ``local.*`` keys of a resolved flat configuration."""
        return cls(steps=fc.integer(flat, "local.steps", low=1), lr=fc.get(flat, "local.lr", float),
                   user_lr=fc.get(flat, "local.user-lr", float), fold_in=fc.get(flat, "local.fold-in", bool))


@dataclass(frozen=True)
class LocalUpdate:
    """What a device contributes to a round, before masking.

    ``item_factors`` and ``item_bias`` are dense deltas over the whole catalogue;
    ``counts`` is 1 for every row the device touched, 0 elsewhere, so that the
    server can average per item from sums alone (all three are summed by secure
    aggregation; the server never sees one device's counts).
    """

    item_factors: np.ndarray
    item_bias: np.ndarray
    counts: np.ndarray
    n_rows: int
    loss: float
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """Further summed segments of models that need them (``"wrmf"``: :data:`fedrec.wire.WRMF_SEGMENTS`)."""

    def segments(self) -> dict[str, np.ndarray]:
        """The arrays that are summed across devices, by name."""
        return {**self.fixed_segments(), **self.extra}

    def fixed_segments(self) -> dict[str, np.ndarray]:
        """The three arrays every model sends (:data:`fedrec.wire.UPDATE_SEGMENTS`), without :attr:`extra`."""
        return {ARRAY_ITEM_FACTORS: self.item_factors, ARRAY_ITEM_BIAS: self.item_bias, ARRAY_COUNTS: self.counts}


def local_update(glob: GlobalParams, local: LocalParams, items: np.ndarray, ratings: np.ndarray, *,
                 model: MFConfig, config: LocalConfig, rng: np.random.Generator,
                 timestamps: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> tuple[LocalUpdate, LocalParams]:
    """Train on one device's rows; return its dense update and its new LOCAL state.

    ``timestamps`` (implicit only, never sent) order the rows for the model's
    recency weights; without them every positive weighs 1. ``weights``
    (implicit only, never sent; e.g. from play counts) multiply them.
    """
    items = np.asarray(items, np.int64)
    if model.kind == "explicit":
        return _explicit_step(glob, local, items, np.asarray(ratings, np.float64), model, config)
    if model.loss == "wrmf":
        return wrmf_step(glob, items, model, timestamps, weights)
    return _implicit_step(glob, local, items, model, config, rng, timestamps, weights)


def wrmf_step(glob: GlobalParams, items: np.ndarray, model: MFConfig, timestamps: np.ndarray | None,
              weights: np.ndarray | None) -> tuple[LocalUpdate, LocalParams]:
    """The device's part of federated ``"wrmf"`` (Ammad-ud-din et al. 2019, FCF).

    The user factor is solved exactly against the current table,
    ``p = (Q^T M Q + Q_u^T (C_u - M_u) Q_u + reg I)^{-1} Q_u^T c_u`` (``Q^T M Q``
    is :attr:`GlobalParams.gram`, public; ``M`` the missing-data weights
    :attr:`GlobalParams.missing_weight`, 1 by default). The item gradient of
    the loss splits into a full-catalogue part, ``m_i (sum_u p_u p_u^T) q_i``
    for every item, which the server forms from the summed ``p p^T`` segment
    alone, and a part on the user's positives, ``((c - m_i) s - c) p`` with
    ``s = p.q_i``: the device sends minus that part (a descent direction, dense
    over the catalogue like any update), ``p p^T``, and the touched rows'
    curvature trace ``(c - m_i)|p|^2``, all through the same secure sum. Biases
    are not part of the model (zero).
    """
    positives, w = _positive_weights(items, timestamps, model, weights)
    c = 1.0 + model.confidence * w
    m = np.ones(len(positives)) if glob.missing_weight is None else glob.missing_weight[positives].astype(np.float64)
    q = glob.item_factors[positives].astype(np.float64)
    a = glob.gram + q.T @ ((c - m)[:, None] * q) + model.reg * np.eye(glob.dim)
    p = np.linalg.solve(a, q.T @ c)
    s = q @ p
    direction = -((c - m) * s - c)[:, None] * p[None, :]
    update = _dense(glob, positives, glob.item_factors[positives] + direction, glob.item_bias[positives],
                    float((c * (1.0 - s) ** 2).sum() / max(len(positives), 1)))
    curvature = np.zeros(glob.n_items, np.float32)
    curvature[positives] = (c - m) * float(p @ p)
    extra = {ARRAY_USER_GRAM: np.outer(p, p).astype(np.float32).reshape(-1), ARRAY_ITEM_CURVATURE: curvature}
    return dataclasses.replace(update, extra=extra), LocalParams(p.astype(np.float32), 0.0)


def _explicit_step(glob: GlobalParams, local: LocalParams, items: np.ndarray, ratings: np.ndarray,
                   model: MFConfig, config: LocalConfig) -> tuple[LocalUpdate, LocalParams]:
    if config.fold_in:
        local = fold_in(glob, items, ratings, reg=model.reg, bias_reg=model.bias_reg)
    p = local.user_factor.astype(np.float64)
    bu = local.user_bias
    q = glob.item_factors[items].astype(np.float64)
    b = glob.item_bias[items].astype(np.float64)
    mu = glob.global_mean
    for _ in range(config.steps):
        err = ratings - (mu + bu + b + q @ p)
        grad_p = (-(err[:, None] * q) + model.reg * p).mean(axis=0)
        grad_bu = float((-err + model.bias_reg * bu).mean())
        grad_q = -err[:, None] * p[None, :] + model.reg * q
        grad_b = -err + model.bias_reg * b
        p -= config.user_lr * grad_p
        bu -= config.user_lr * grad_bu
        q -= config.lr * grad_q
        b -= config.lr * grad_b
    err = ratings - (mu + bu + b + q @ p)
    update = _dense(glob, items, q, b, float(np.mean(err * err)) if len(items) else 0.0)
    return update, LocalParams(p.astype(np.float32), float(bu))


def _implicit_step(glob: GlobalParams, local: LocalParams, items: np.ndarray, model: MFConfig,
                   config: LocalConfig, rng: np.random.Generator, timestamps: np.ndarray | None,
                   weights: np.ndarray | None = None) -> tuple[LocalUpdate, LocalParams]:
    """Full-batch steps of the loss :func:`fedrec.train.central._implicit_loss` takes per positive.

    The negatives are drawn once per round, distinct and outside the positives;
    their total weight per positive is ``model.neg_weight``, so each negative row
    weighs ``neg_weight * sum(positive weights) / n_negatives``. For BPR the
    negatives are dealt to the positives in turn, one pair each.
    """
    positives, weights = _positive_weights(items, timestamps, model, weights)
    n_pos = len(positives)
    negatives = sample_negatives(glob.n_items, positives, model.negatives * n_pos, rng)
    n_neg = len(negatives)
    rows = np.concatenate([positives, negatives])
    p = local.user_factor.astype(np.float64)
    bu = local.user_bias
    q = glob.item_factors[rows].astype(np.float64)
    b = glob.item_bias[rows].astype(np.float64)
    pair_pos = np.arange(n_neg) % max(n_pos, 1)
    neg_w = model.neg_weight * weights.sum() / max(n_neg, 1)
    pair_w = model.neg_weight * weights[pair_pos] * n_pos / max(n_neg, 1)
    loss = 0.0
    for _ in range(config.steps):
        s = bu + b + q @ p
        g, loss = _implicit_grad(s, n_pos, weights, neg_w, pair_pos, pair_w, model.loss)
        grad_p = (g[:, None] * q).sum(axis=0) / max(weights.sum(), 1.0) + model.reg * p
        grad_q = g[:, None] * p[None, :] + model.reg * q
        grad_b = g + model.bias_reg * b
        p -= config.user_lr * grad_p
        q -= config.lr * grad_q
        b -= config.lr * grad_b
    return _dense(glob, rows, q, b, loss), LocalParams(p.astype(np.float32), float(bu))


def _positive_weights(items: np.ndarray, timestamps: np.ndarray | None, model: MFConfig,
                      row_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positives and their weights (an item seen twice keeps its larger weight).

    A row's weight is its recency weight (when the model uses recency and
    timestamps are given) times its ``row_weights`` entry (default 1).
    """
    positives, inverse = np.unique(items, return_inverse=True)
    per_row = np.ones(len(items))
    if timestamps is not None and model.recency_boost > 0 and len(items):
        per_row = recency_weights(np.zeros(len(items), np.int64), items, np.asarray(timestamps), model)
    if row_weights is not None:
        per_row = per_row * np.asarray(row_weights, np.float64)
    weights = np.zeros(len(positives))
    np.maximum.at(weights, inverse.reshape(-1), per_row)
    return positives, weights


def _implicit_grad(s: np.ndarray, n_pos: int, weights: np.ndarray, neg_w: float, pair_pos: np.ndarray,
                   pair_w: np.ndarray, loss: str) -> tuple[np.ndarray, float]:
    """``d loss / d score`` for every row (positives first) and the loss per unit of positive weight."""
    s_pos, s_neg = s[:n_pos], s[n_pos:]
    total = max(weights.sum(), 1.0)
    if loss == "bpr":
        diff = s_neg - s_pos[pair_pos]
        g_pair = pair_w * _sigmoid(diff)
        g_won = np.bincount(pair_pos, weights=g_pair, minlength=n_pos).astype(np.float64)
        value = float((pair_w * np.logaddexp(0.0, diff)).sum())
        return np.concatenate([-g_won, g_pair]), value / total
    g_pos = weights * (_sigmoid(s_pos) - 1.0)
    g_neg = neg_w * _sigmoid(s_neg)
    value = float((weights * np.logaddexp(0.0, -s_pos)).sum() + neg_w * np.logaddexp(0.0, s_neg).sum())
    return np.concatenate([g_pos, g_neg]), value / total


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sample_negatives(n_items: int, positives: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct items the user has not interacted with, uniformly."""
    seen = np.unique(np.asarray(positives, np.int64))
    n = min(n, n_items - len(seen))
    if n <= 0:
        return np.empty(0, np.int64)
    if n * 4 < n_items:
        draws = np.unique(rng.integers(0, n_items, size=2 * n + 8))
        draws = draws[~np.isin(draws, seen)]
        if len(draws) >= n:
            return rng.permutation(draws)[:n]
    candidates = np.setdiff1d(np.arange(n_items), seen, assume_unique=True)
    return rng.choice(candidates, size=n, replace=False)


def _dense(glob: GlobalParams, rows: np.ndarray, q: np.ndarray, b: np.ndarray, loss: float) -> LocalUpdate:
    dq = np.zeros_like(glob.item_factors)
    db = np.zeros_like(glob.item_bias)
    counts = np.zeros(glob.n_items, np.float32)
    np.add.at(dq, rows, (q - glob.item_factors[rows]).astype(np.float32))
    np.add.at(db, rows, (b - glob.item_bias[rows]).astype(np.float32))
    np.add.at(counts, rows, 1.0)
    return LocalUpdate(dq, db, counts, len(rows), loss)
