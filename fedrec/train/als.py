"""Alternating least squares: the fast centralized trainers.

Two models, both solved one side at a time with every user (then every item)
updated at once by vectorized torch operations (no Python loop over users):

* **Biased explicit MF** (E1): the same objective as the SGD trainer of
  :mod:`fedrec.train.central`, ``sum (r - mu - b_u - b_i - p.q)^2`` plus
  ``reg |p|^2 + bias_reg b^2`` per observed rating. With the item side fixed,
  each user's ``(p_u, b_u)`` is a ``(d+1)``-dimensional ridge problem solved
  exactly (the fold-in of :mod:`fedrec.train.foldin`, for all users at once);
  then the same for items. The per-rating penalty is ALS-WR's weighted-lambda
  regularisation (Zhou et al. 2008).
* **Weighted full-catalogue implicit MF** (``model.loss = "wrmf"``, Hu, Koren
  and Volinsky 2008): every (user, item) cell counts, ``sum_u sum_i c_ui
  (y_ui - p_u.q_i)^2 + reg (|P|^2 + |Q|^2)`` with ``y = 1`` on interactions and
  0 elsewhere, and confidence ``c_ui = 1 + confidence * w_ui`` on
  interactions (1 elsewhere). ``w`` is the per-interaction weight (recency
  weights times the data's own weights, default 1). With ``model.pop-exponent``
  a non-interaction of item ``i`` weighs ``m_i`` instead of 1 (eALS, He et al.
  2016), which keeps the full-catalogue part a ``d x d`` matrix. The full-catalogue part
  reduces to the ``d x d`` Gram matrix of the other side, so a sweep costs
  ``O(nnz d cg_steps + (n_users + n_items) d^2)``: the conjugate-gradient
  solve of Takacs, Pilaszy and Tikk (2011), warm-started, as in ``implicit``.
  The model has no biases (they stay 0), so it scores with the shared rule.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.interactions import Interactions
from fedrec.errors import ConfigError
from fedrec.model.mf import MFConfig, MFModel, missing_weights, recency_weights
from fedrec.model.params import GlobalParams, UserTable

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ALSConfig:
    """Sweeps and solver of the ALS trainers.

    Attributes
    ----------
    iterations:
        Sweeps (a user half-step then an item half-step).
    cg_steps:
        Implicit model: conjugate-gradient steps per half-step, warm-started
        from the previous factors; ``0`` solves each ``d x d`` system exactly.
    seed:
        Seeds the initial item factors.
    """

    iterations: int = 15
    cg_steps: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"train.iterations: must be >= 1, got {self.iterations}")
        if self.cg_steps < 0:
            raise ConfigError(f"train.cg-steps: must be >= 0, got {self.cg_steps}")


def train_als(train: Interactions, model: MFConfig, config: ALSConfig | None = None, *,
              weights: np.ndarray | None = None, progress: ProgressFn | None = None) -> MFModel:
    """Fit ``model`` on ``train`` by ALS; the explicit or the full-catalogue implicit objective.

    Parameters
    ----------
    weights
        Optional per-interaction weights (e.g. from play counts), one per row of
        ``train``; implicit: they scale the confidence, explicit: the squared error.
    """
    config = config or ALSConfig()
    if model.kind == "implicit" and model.loss != "wrmf":
        raise ConfigError(f"model.loss: ALS fits 'wrmf', not {model.loss!r} (use the SGD trainer)")
    if weights is not None and len(weights) != len(train):
        raise ConfigError(f"weights: {len(weights)} values for {len(train)} interactions")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured like the peers: one thread
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
            if model.kind == "explicit":
                fitted = _explicit(train, model, config, weights, progress)
            else:
                fitted = _implicit(train, model, config, weights, progress)
    finally:
        torch.set_num_threads(threads)
    log.debug("ALS: %d sweeps in %.2fs", config.iterations, time.perf_counter() - start)
    return fitted


def confidence_weights(train: Interactions, model: MFConfig, weights: np.ndarray | None = None) -> np.ndarray:
    """``w_ui`` of every interaction: recency weights (if the model uses them) times ``weights``."""
    w = np.ones(len(train), np.float64)
    if model.recency_boost > 0:
        w = recency_weights(train.users, train.items, train.timestamps, model)
    if weights is not None:
        w = w * np.asarray(weights, np.float64)
    return w


# -- sparse helpers ------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """The interactions as a CSR matrix from one side's rows to the other side's columns.

    Duplicate (row, column) pairs are merged (their values summed), which
    leaves a squared-error objective unchanged. ``values`` holds one summed
    array per input array, in CSR order.
    """

    crow: torch.Tensor
    col: torch.Tensor
    values: tuple[torch.Tensor, ...]
    shape: tuple[int, int]

    @classmethod
    def build(cls, rows: np.ndarray, cols: np.ndarray, values: tuple[np.ndarray, ...],
              shape: tuple[int, int]) -> _Side:
        key = np.asarray(rows, np.int64) * shape[1] + np.asarray(cols, np.int64)
        uniq, inverse = np.unique(key, return_inverse=True)
        r, c = uniq // shape[1], uniq % shape[1]
        crow = np.searchsorted(r, np.arange(shape[0] + 1))
        sums = tuple(torch.from_numpy(np.bincount(inverse, weights=v, minlength=len(uniq)).astype(np.float32))
                     for v in values)
        return cls(torch.from_numpy(crow), torch.from_numpy(c), sums, shape)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The CSR matrix with this pattern and ``values`` (torch's beta-state warning silenced)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape)

    def dots(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``left[row] . right[col]`` at every stored entry, in CSR order (no dense intermediate)."""
        pattern = self.matrix(torch.ones_like(self.values[0]))
        out: torch.Tensor = torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values()
        return out


def _sides(users: np.ndarray, items: np.ndarray, values: tuple[np.ndarray, ...],
           n_users: int, n_items: int) -> tuple[_Side, _Side]:
    return (_Side.build(users, items, values, (n_users, n_items)),
            _Side.build(items, users, values, (n_items, n_users)))


def _outer(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``x x^T``, flattened: ``(n, k*k)``."""
    return (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)


# -- explicit: biased MF --------------------------------------------------------


def _explicit(train: Interactions, model: MFConfig, config: ALSConfig, weights: np.ndarray | None,
              progress: ProgressFn | None) -> MFModel:
    w = np.ones(len(train)) if weights is None else np.asarray(weights, np.float64)
    mu = float(train.ratings.mean()) if len(train) else 0.0
    by_user, by_item = _sides(train.users, train.items, (w, w * (train.ratings - mu)), train.n_users, train.n_items)
    g = torch.Generator().manual_seed(config.seed)
    q = torch.randn(train.n_items, model.dim, generator=g) * model.init_std
    item = torch.cat([q, torch.zeros(train.n_items, 1)], dim=1)  # [q_i, b_i]
    user = torch.zeros(train.n_users, model.dim + 1)  # [p_u, b_u]
    for it in range(config.iterations):
        user = _biased_half(by_user, item, user, model, config.cg_steps)
        item = _biased_half(by_item, user, item, model, config.cg_steps)
        if progress:
            progress(it + 1, config.iterations)
    d = model.dim
    return _model(model, item[:, :d], item[:, d], user[:, :d], user[:, d], mu)


def _biased_half(side: _Side, other: torch.Tensor, start: torch.Tensor, model: MFConfig,
                 cg_steps: int) -> torch.Tensor:
    """Every row's ridge solve of ``s = [factor, bias]`` against the fixed other side ``[f, b]``.

    Row ``u`` solves ``(sum w x x^T + n_u diag(reg.., bias_reg)) s = sum w (r - mu - b) x``
    with ``x = [f, 1]`` and ``n_u = sum w``: conjugate gradient from ``start``
    (``cg_steps`` steps), or exactly when ``cg_steps == 0``.
    """
    d = other.shape[1] - 1
    x = torch.cat([other[:, :d], torch.ones(len(other), 1)], dim=1)
    w = side.matrix(side.values[0])
    rhs = side.matrix(side.values[1]) @ x - w @ (other[:, d:] * x)
    penalty = torch.full((d + 1,), model.reg)
    penalty[d] = model.bias_reg
    diag = (w @ torch.ones(len(x), 1)) * penalty
    if cg_steps == 0:
        gram = (w @ _outer(x)).reshape(-1, d + 1, d + 1) + torch.diag_embed(diag + 1e-9)
        return _solve(gram, rhs)
    return _cg(lambda v: side.matrix(side.dots(v, x) * side.values[0]) @ x + diag * v, rhs, start, cg_steps)


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched symmetric positive-definite solve (Cholesky, float64)."""
    factor = torch.linalg.cholesky(a.double())
    return torch.cholesky_solve(b.double()[:, :, None], factor)[:, :, 0].float()


def _cg(matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, start: torch.Tensor,
        steps: int) -> torch.Tensor:
    """``steps`` conjugate-gradient steps on every row's system at once, warm-started from ``start``."""
    f = start.clone()
    res = rhs - matvec(f)
    direction = res.clone()
    rr = (res * res).sum(1)
    for _ in range(steps):
        a_dir = matvec(direction)
        alpha = rr / (direction * a_dir).sum(1).clamp_min(1e-20)
        f += alpha[:, None] * direction
        res -= alpha[:, None] * a_dir
        rr_new = (res * res).sum(1)
        direction = res + (rr_new / rr.clamp_min(1e-20))[:, None] * direction
        rr = rr_new
    return f


# -- implicit: weighted full-catalogue MF ----------------------------------------


def _implicit(train: Interactions, model: MFConfig, config: ALSConfig, weights: np.ndarray | None,
              progress: ProgressFn | None) -> MFModel:
    w = confidence_weights(train, model, weights)
    by_user, by_item = _sides(train.users, train.items, (w,), train.n_users, train.n_items)
    g = torch.Generator().manual_seed(config.seed)
    q = torch.randn(train.n_items, model.dim, generator=g) * model.init_std
    p = torch.randn(train.n_users, model.dim, generator=g) * model.init_std
    missing = None
    if model.pop_exponent != 0:  # distinct users per item: the stored entries of each item's row
        missing = torch.from_numpy(missing_weights(by_item.crow.diff().numpy(), model.pop_exponent)).float()
    for it in range(config.iterations):
        p = wrmf_solve(by_user, q, p, confidence=model.confidence, reg=model.reg, cg_steps=config.cg_steps,
                       other_missing=missing)
        q = wrmf_solve(by_item, p, q, confidence=model.confidence, reg=model.reg, cg_steps=config.cg_steps,
                       row_missing=missing)
        if progress:
            progress(it + 1, config.iterations)
    return _model(model, q, torch.zeros(train.n_items), p, torch.zeros(train.n_users), 0.0)


def wrmf_solve(side: _Side, other: torch.Tensor, start: torch.Tensor, *, confidence: float, reg: float,
               cg_steps: int, other_missing: torch.Tensor | None = None,
               row_missing: torch.Tensor | None = None) -> torch.Tensor:
    """One half-step: every row's ``(m_r G + sum (c - m_r m_j) x_j x_j^T + reg I) f = sum c x_j``.

    ``G = other^T diag(m) other`` is the full-catalogue term, ``c = 1 +
    confidence * w`` on the row's interactions ``j``, and ``m`` the
    missing-data weights (``model.pop-exponent``) of the items: of the other
    side's rows (``other_missing``, the user half-step) or of this side's rows
    (``row_missing``, the item half-step); ``None`` is 1 everywhere, Hu et
    al.'s uniform weight. ``cg_steps > 0`` runs that many conjugate-gradient
    steps from ``start``, matrix-free (one sampled dense-dense product and one
    sparse-dense product a step); ``0`` forms each row's matrix and solves it
    exactly.
    """
    d = other.shape[1]
    c = 1.0 + confidence * side.values[0]
    extra = c - 1.0  # c - m_r m_j, the weight beyond the full-catalogue term
    weighted = other if other_missing is None else other * other_missing[:, None]
    gram = weighted.T @ other
    if other_missing is not None:
        extra = c - other_missing[side.col]
    if row_missing is not None:
        extra = c - torch.repeat_interleave(row_missing, side.crow.diff())
    scale = None if row_missing is None else row_missing[:, None]
    rhs = side.matrix(c) @ other
    if cg_steps == 0:
        rows = (side.matrix(extra) @ _outer(other)).reshape(-1, d, d)
        full = gram[None] if scale is None else scale[:, :, None] * gram[None]
        return _solve(rows + full + reg * torch.eye(d), rhs)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        full = v @ gram if scale is None else scale * (v @ gram)
        return full + reg * v + side.matrix(side.dots(v, other) * extra) @ other

    return _cg(matvec, rhs, start, cg_steps)


def _model(cfg: MFConfig, q: torch.Tensor, bi: torch.Tensor, p: torch.Tensor, bu: torch.Tensor,
           mu: float) -> MFModel:
    def arr(t: torch.Tensor) -> np.ndarray:
        return t.numpy().astype(np.float32)

    return MFModel(cfg, GlobalParams(arr(q), arr(bi), mu), UserTable(arr(p), arr(bu)))
