"""Matrix-factorization models: biased MF for ratings, logistic MF for implicit feedback.

Both share one scoring rule, ``score(u, i) = mu + b_u + b_i + p_u . q_i``, so a
device ranks its catalogue the same way whichever loss trained the table. They
differ in the loss (:mod:`fedrec.model.losses`) and in ``mu`` (the mean rating
for explicit data, 0 for implicit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedrec import flatconfig as fc
from fedrec.errors import ConfigError, ModelError
from fedrec.model.params import GlobalParams, LocalParams, UserTable

ModelKind = Literal["explicit", "implicit"]
MODEL_KINDS: tuple[str, ...] = ("explicit", "implicit")
IMPLICIT_LOSSES: tuple[str, ...] = ("logistic", "bpr", "wrmf")


@dataclass(frozen=True)
class MFConfig:
    """Hyper-parameters of the model (not of a trainer).

    Attributes
    ----------
    kind:
        ``"explicit"`` (biased MF, squared error on ratings) or ``"implicit"``
        (logistic loss on interactions against sampled negatives).
    dim:
        Embedding dimension ``d``.
    reg:
        L2 penalty on factors, applied per observed rating (the usual SGD form).
    bias_reg:
        L2 penalty on biases.
    init_std:
        Standard deviation of the random initial factors.
    negatives:
        Implicit only: negatives sampled per positive.
    loss:
        Implicit only: ``"logistic"`` (each item scored against a 0/1 label)
        or ``"bpr"`` (each positive ranked above its sampled negatives), both
        against sampled negatives; or ``"wrmf"``: weighted squared error over
        the whole catalogue (Hu et al. 2008), every non-interaction a negative
        of weight 1 (no sampling, no biases; :mod:`fedrec.train.als`). The
        name is the loss's, not a solver's: centralized it is fitted by
        alternating least squares, federated by a device-side exact solve
        and a server-side item step, and both minimise the same objective.
    neg_weight:
        Implicit only: total weight of a positive's negatives. The negative
        term is the mean over the sampled negatives times ``neg_weight``, so
        ``negatives`` sets the variance of the estimate and ``neg_weight`` its
        weight (``neg_weight == negatives`` is the plain sum).
    confidence:
        ``"wrmf"`` only: an interaction's confidence is ``1 + confidence * w``
        (``w`` its weight: recency times the data's own weight, default 1);
        ``implicit``'s ALS calls it ``alpha``.
    pop_exponent:
        ``"wrmf"`` only: a non-interaction of item ``i`` weighs
        ``(1 + n_i) ** pop_exponent``, normalised to mean 1 over the catalogue
        (``n_i``: how many users interacted with ``i``;
        :func:`missing_weights`), the item-dependent missing-data weight of
        eALS (He et al. 2016). ``0`` weighs every non-interaction 1, as
        ``implicit``'s ALS does; a negative exponent penalises popular items
        less for being unseen (a popularity prior), which validation picks on
        long-tailed catalogues.
    recency_boost, recency_scale:
        Implicit only: a positive's weight is ``1 + recency_boost *
        exp(-age / recency_scale)``, where ``age`` counts the user's
        interactions after it (0 for the latest, by timestamp then item index).
        ``recency_boost == 0`` weighs every positive 1.
    """

    kind: ModelKind = "explicit"
    dim: int = 32
    reg: float = 0.12
    bias_reg: float = 0.12
    init_std: float = 0.1
    negatives: int = 4
    loss: str = "logistic"
    neg_weight: float = 4.0
    recency_boost: float = 0.0
    recency_scale: float = 5.0
    confidence: float = 10.0
    pop_exponent: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind: {self.kind!r} is not one of {MODEL_KINDS}")
        if self.dim < 1:
            raise ConfigError(f"model.dim: must be >= 1, got {self.dim}")
        for name in ("reg", "bias_reg", "init_std"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")
        if self.loss not in IMPLICIT_LOSSES:
            raise ConfigError(f"model.loss: {self.loss!r} is not one of {IMPLICIT_LOSSES}")
        if self.negatives < 1:
            raise ConfigError(f"model.negatives: must be >= 1, got {self.negatives}")
        if not self.neg_weight > 0:
            raise ConfigError(f"model.neg-weight: must be > 0, got {self.neg_weight}")
        if not self.recency_boost >= 0:
            raise ConfigError(f"model.recency-boost: must be >= 0, got {self.recency_boost}")
        if not self.confidence >= 0:
            raise ConfigError(f"model.confidence: must be >= 0, got {self.confidence}")
        if not -4.0 <= self.pop_exponent <= 4.0:
            raise ConfigError(f"model.pop-exponent: must be in [-4, 4], got {self.pop_exponent}")
        if not self.recency_scale > 0:
            raise ConfigError(f"model.recency-scale: must be > 0, got {self.recency_scale}")

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> MFConfig:
        """The ``model.*`` keys of a resolved flat configuration; the protocol sets the kind (E1 ratings, R1 clicks)."""
        return cls(kind="explicit" if flat["protocol"] == "E1" else "implicit",
                   dim=fc.integer(flat, "model.dim", low=1), reg=fc.get(flat, "model.reg", float),
                   bias_reg=fc.get(flat, "model.bias-reg", float), init_std=fc.get(flat, "model.init-std", float),
                   negatives=fc.integer(flat, "model.negatives", low=1), loss=fc.get(flat, "model.loss", str),
                   neg_weight=fc.get(flat, "model.neg-weight", float),
                   recency_boost=fc.get(flat, "model.recency-boost", float),
                   recency_scale=fc.get(flat, "model.recency-scale", float),
                   confidence=fc.get(flat, "model.confidence", float),
                   pop_exponent=fc.get(flat, "model.pop-exponent", float))


def recency_weights(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, cfg: MFConfig) -> np.ndarray:
    """Weight of each interaction as a positive: ``1 + boost * exp(-age / scale)`` (see :class:`MFConfig`).

    ``age`` is the number of the same user's interactions ordered after it by
    ``(timestamp, item index)``, the order the leave-last-out split uses.
    """
    users = np.asarray(users, np.int64)
    n = len(users)
    if n == 0 or cfg.recency_boost == 0:
        return np.ones(n, np.float64)
    order = np.lexsort((np.asarray(items, np.int64), np.asarray(timestamps, np.int64), users))
    sorted_users = users[order]
    last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    ends = np.flatnonzero(last)
    end_of = ends[np.searchsorted(ends, np.arange(n))]
    age = np.empty(n, np.float64)
    age[order] = end_of - np.arange(n)
    return 1.0 + cfg.recency_boost * np.exp(-age / cfg.recency_scale)


def missing_weights(counts: np.ndarray, exponent: float) -> np.ndarray:
    """Per-item weight of a non-interaction under ``model.pop-exponent`` (see :class:`MFConfig`).

    ``counts[i]`` is how many users interacted with item ``i``: centrally from
    the training data, federated from the summed ``counts`` segment of a round
    (one per device that touched ``i``). Returns ``(1 + counts) ** exponent``
    scaled to mean 1, so the exponent moves weight between items without
    changing the total weight of the missing data.
    """
    w = (1.0 + np.asarray(counts, np.float64)) ** exponent
    return np.asarray(w * (len(w) / w.sum()) if len(w) else w)


def score_items(glob: GlobalParams, local: LocalParams) -> np.ndarray:
    """Scores of every item for one user: what a device ranks to recommend."""
    return np.asarray(glob.global_mean + local.user_bias + glob.item_bias + glob.item_factors @ local.user_factor)


@dataclass(frozen=True)
class MFModel:
    """A trained model as a centralized trainer or evaluator holds it: GLOBAL + all LOCAL."""

    config: MFConfig
    glob: GlobalParams
    users: UserTable

    def __post_init__(self) -> None:
        if self.glob.dim != self.users.user_factors.shape[1]:
            raise ModelError("MFModel: user and item factors have different dimensions")

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of (user, item) pairs."""
        p = self.users.user_factors[users]
        q = self.glob.item_factors[items]
        return np.asarray(self.glob.global_mean + self.users.user_bias[users] + self.glob.item_bias[items]
                          + np.einsum("nd,nd->n", p, q))

    def score_block(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), n_items)`` scores for full-catalogue ranking."""
        return np.asarray(self.glob.global_mean + self.users.user_bias[users, None] + self.glob.item_bias[None, :]
                          + self.users.user_factors[users] @ self.glob.item_factors.T)
