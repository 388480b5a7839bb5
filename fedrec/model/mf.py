"""Matrix-factorization models: biased MF for ratings, logistic MF for implicit feedback.

Both share one scoring rule, ``score(u, i) = mu + b_u + b_i + p_u . q_i``, so a
device ranks its catalogue the same way whichever loss trained the table. They
differ in the loss (:mod:`fedrec.model.losses`) and in ``mu`` (the mean rating
for explicit data, 0 for implicit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedrec.errors import ConfigError, ModelError
from fedrec.model.params import GlobalParams, LocalParams, UserTable

ModelKind = Literal["explicit", "implicit"]
MODEL_KINDS: tuple[str, ...] = ("explicit", "implicit")
IMPLICIT_LOSSES: tuple[str, ...] = ("logistic", "bpr", "softmax")


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
        or ``"bpr"`` (each positive ranked above its sampled negatives).
    """

    kind: ModelKind = "explicit"
    dim: int = 32
    reg: float = 0.1
    bias_reg: float = 0.1
    init_std: float = 0.1
    negatives: int = 4
    loss: str = "logistic"
    neg_weight: float = 1.0
    neg_reg: float = 1.0
    neg_alpha: float = 0.0

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


def score_items(glob: GlobalParams, local: LocalParams) -> np.ndarray:
    """Scores of every item for one user: what a device ranks to recommend."""
    return glob.global_mean + local.user_bias + glob.item_bias + glob.item_factors @ local.user_factor


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
        return (self.glob.global_mean + self.users.user_bias[users] + self.glob.item_bias[items]
                + np.einsum("nd,nd->n", p, q))

    def score_block(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), n_items)`` scores for full-catalogue ranking."""
        return (self.glob.global_mean + self.users.user_bias[users, None] + self.glob.item_bias[None, :]
                + self.users.user_factors[users] @ self.glob.item_factors.T)
