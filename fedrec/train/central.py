"""Centralized baseline trainer: the reference every federated and private run is compared to.

Mini-batch SGD in torch over all interactions at once, the way a server that
collected everyone's data would train. Losses are sums over the batch with the
L2 penalty applied per observed row (the Funk/Surprise SVD form), so the learning
rate means the same thing as in per-rating SGD and as in the device's local step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.interactions import Interactions
from fedrec.errors import ConfigError
from fedrec.model.mf import MFConfig, MFModel, recency_weights
from fedrec.model.params import GlobalParams, UserTable
from fedrec.train.als import ALSConfig, train_als

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
SOLVERS = ("sgd", "als")


@dataclass(frozen=True)
class CentralConfig:
    """Trainer settings (the model's own settings live in :class:`MFConfig`)."""

    epochs: int = 40
    lr: float = 0.005
    batch_size: int = 512
    lr_decay: float = 1.0
    seed: int = 0
    solver: str = "sgd"
    """``"sgd"`` (mini-batch SGD, below) or ``"als"`` (:mod:`fedrec.train.als`, ``epochs`` sweeps).
    The full-catalogue implicit loss ``"wrmf"`` is always fitted by ALS."""
    cg_steps: int = 3
    """ALS only: conjugate-gradient steps per half-sweep (0: exact solves)."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs: must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch-size: must be >= 1, got {self.batch_size}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"train.solver: {self.solver!r} is not one of {SOLVERS}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train.lr-decay: must be in (0, 1], got {self.lr_decay}")


#: Trainer settings per protocol, chosen on validation splits carved from the training data (never on
#: test items; ``python -m simulations.tune_e1`` / ``tune_r1``, README "How the defaults were chosen").
#: The model's own settings are the run configuration's (:data:`fedrec.runconfig.PROTOCOL_PRESETS`).
CENTRAL_PRESETS: dict[str, CentralConfig] = {
    "E1": CentralConfig(epochs=60, lr=0.005, batch_size=512),
    "R1": CentralConfig(epochs=40, lr=0.01, batch_size=512),
}


# The ALS trainers (fedrec.train.als) with their models, chosen on the same validation splits
# (python -m simulations.tune_e1 --als; python -m simulations.tune_implicit). E1: biased MF by ALS;
# R1: the weighted full-catalogue implicit loss ("wrmf"), whose negatives are the whole catalogue.
ALS_PRESETS: dict[str, tuple[MFConfig, CentralConfig]] = {
    "E1": (MFConfig(kind="explicit", dim=64, reg=0.14, bias_reg=0.12), CentralConfig(epochs=15, solver="als")),
    "R1": (MFConfig(kind="implicit", loss="wrmf", dim=64, reg=30.0, confidence=3.0, recency_boost=4.0,
                    recency_scale=5.0), CentralConfig(epochs=15, solver="als")),
}


def train_central(train: Interactions, model: MFConfig, trainer: CentralConfig | None = None,
                  *, progress: ProgressFn | None = None, weights: np.ndarray | None = None) -> MFModel:
    """Fit a model on all of ``train``; returns GLOBAL and LOCAL parameters together.

    ``weights`` (optional, one per interaction, e.g. from play counts) scale
    each interaction's term: its confidence for ``"wrmf"``, its loss otherwise.
    """
    trainer = trainer or CentralConfig()
    if weights is None and len(train) and not np.all(train.weights == 1.0):
        weights = np.asarray(train.weights, np.float32)  # confidence weights read with csv.weight-col
    if trainer.solver == "als" or model.loss == "wrmf" and model.kind == "implicit":
        return train_als(train, model, ALSConfig(iterations=trainer.epochs, cg_steps=trainer.cg_steps,
                                                 seed=trainer.seed), weights=weights, progress=progress)
    if weights is not None and len(weights) != len(train):
        raise ConfigError(f"weights: {len(weights)} values for {len(train)} interactions")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches are tiny: intra-op threads only add contention
    try:
        return _train(train, model, trainer, progress, weights)
    finally:
        torch.set_num_threads(threads)


def _train(train: Interactions, model: MFConfig, trainer: CentralConfig, progress: ProgressFn | None,
           extra: np.ndarray | None) -> MFModel:
    torch.manual_seed(trainer.seed)
    gen = torch.Generator().manual_seed(trainer.seed)
    mu = float(train.ratings.mean()) if model.kind == "explicit" and len(train) else 0.0
    params = _init_params(train.n_users, train.n_items, model, trainer.seed)
    opt = torch.optim.SGD(list(params.values()), lr=trainer.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, trainer.lr_decay)
    users, items = torch.from_numpy(train.users), torch.from_numpy(train.items)
    ratings = torch.from_numpy(train.ratings)
    weights = None if extra is None else torch.from_numpy(np.asarray(extra, np.float32))
    if model.kind == "implicit" and model.recency_boost > 0:
        recency = torch.from_numpy(
            recency_weights(train.users, train.items, train.timestamps, model).astype(np.float32))
        weights = recency if weights is None else weights * recency
    start = time.perf_counter()
    for epoch in range(trainer.epochs):
        perm = torch.randperm(len(train), generator=gen)
        for s in range(0, len(train), trainer.batch_size):
            b = perm[s:s + trainer.batch_size]
            if model.kind == "explicit":
                loss = _explicit_loss(params, users[b], items[b], ratings[b], mu, model,
                                      None if weights is None else weights[b])
            else:
                loss = _implicit_loss(params, users[b], items[b], train.n_items, model, gen,
                                      None if weights is None else weights[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch declares Tensor.backward without types
            opt.step()
        sched.step()
        if progress:
            progress(epoch + 1, trainer.epochs)
    log.debug("central training: %d epochs in %.2fs", trainer.epochs, time.perf_counter() - start)
    return _to_model(params, mu, model)



def _init_params(n_users: int, n_items: int, cfg: MFConfig, seed: int) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {
        "P": torch.nn.Parameter(torch.randn(n_users, cfg.dim, generator=g) * cfg.init_std),
        "Q": torch.nn.Parameter(torch.randn(n_items, cfg.dim, generator=g) * cfg.init_std),
        "bu": torch.nn.Parameter(torch.zeros(n_users)),
        "bi": torch.nn.Parameter(torch.zeros(n_items)),
    }


def _explicit_loss(params: dict[str, torch.nn.Parameter], u: torch.Tensor, i: torch.Tensor,
                   r: torch.Tensor, mu: float, cfg: MFConfig, weights: torch.Tensor | None = None) -> torch.Tensor:
    p, q, bu, bi = params["P"][u], params["Q"][i], params["bu"][u], params["bi"][i]
    err = r - (mu + bu + bi + (p * q).sum(1))
    sq = err * err if weights is None else weights * err * err
    return (sq.sum() + cfg.reg * ((p * p).sum() + (q * q).sum())
            + cfg.bias_reg * ((bu * bu).sum() + (bi * bi).sum()))


def _implicit_loss(params: dict[str, torch.nn.Parameter], u: torch.Tensor, i: torch.Tensor,
                   n_items: int, cfg: MFConfig, gen: torch.Generator, weights: torch.Tensor | None = None,
                   ) -> torch.Tensor:
    """Each positive against ``cfg.negatives`` uniform negatives, weighted as :class:`MFConfig` says.

    Per positive: ``softplus(-s_pos) + neg_weight * mean_k softplus(s_neg_k)``
    (logistic) or ``neg_weight * mean_k softplus(s_neg_k - s_pos)`` (BPR),
    times the positive's ``weights`` entry when given.
    """
    neg = torch.randint(0, n_items, (len(u), cfg.negatives), generator=gen)
    p, bu = params["P"][u], params["bu"][u]
    q_pos, b_pos = params["Q"][i], params["bi"][i]
    q_neg, b_neg = params["Q"][neg], params["bi"][neg]
    s_pos = bu + b_pos + (p * q_pos).sum(1)
    s_neg = bu[:, None] + b_neg + torch.einsum("bd,bkd->bk", p, q_neg)
    softplus = torch.nn.functional.softplus
    if cfg.loss == "bpr":
        per_row = cfg.neg_weight * softplus(s_neg - s_pos[:, None]).mean(1)
    else:
        per_row = softplus(-s_pos) + cfg.neg_weight * softplus(s_neg).mean(1)
    loss = per_row.sum() if weights is None else (per_row * weights).sum()
    reg = (p * p).sum() + (q_pos * q_pos).sum() + (q_neg * q_neg).sum() / cfg.negatives
    return loss + cfg.reg * reg + cfg.bias_reg * ((b_pos * b_pos).sum() + (bu * bu).sum())


def _to_model(params: dict[str, torch.nn.Parameter], mu: float, cfg: MFConfig) -> MFModel:
    def arr(name: str) -> np.ndarray:
        return params[name].detach().numpy().astype(np.float32, copy=True)

    glob = GlobalParams(arr("Q"), arr("bi"), mu)
    return MFModel(cfg, glob, UserTable(arr("P"), arr("bu")))
