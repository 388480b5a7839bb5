"""Server-side aggregation: from summed device updates to a new global table.

The server only ever sees *sums* over a round's surviving devices (with secure
aggregation, it cannot see anything else). From the summed deltas and summed
touch counts it forms a pseudo-gradient and hands it to a server optimizer:

- ``item`` averaging divides each item's summed delta by the number of devices
  that touched it: a popular item moves as much as a rare one (the usual choice
  for federated MF, where most devices touch few items).
- ``fedavg`` divides by the number of contributing devices, as FedAvg does.
  Under user-level DP this is the one to use: it needs no per-item counts, whose
  exact values would otherwise have to be privatised too.

Optimizers follow Reddi et al. (2021), "Adaptive Federated Optimization": plain
server learning rate, FedAdagrad and FedAdam over the pseudo-gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedrec import flatconfig as fc
from fedrec.errors import ConfigError
from fedrec.model.params import GlobalParams
from fedrec.wire import ARRAY_ITEM_CURVATURE, ARRAY_USER_GRAM, WRMF_SEGMENTS

Averaging = Literal["item", "fedavg"]
AVERAGINGS = ("item", "fedavg")
OPTIMIZERS = ("sgd", "adam", "adagrad")


@dataclass(frozen=True)
class RoundSums:
    """The sums a round produced: deltas, counts and how many devices contributed."""

    item_factors: np.ndarray
    item_bias: np.ndarray
    counts: np.ndarray
    n_clients: int
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Sums of a model's extra segments (``"wrmf"``: ``user_gram``, ``item_curvature``)."""


def pseudo_gradient(sums: RoundSums, *, averaging: Averaging, expected_clients: float | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean update per item (``item``) or per device (``fedavg``), as a descent direction.

    ``expected_clients`` replaces the observed count in ``fedavg`` mode (under
    Poisson sampling with DP, dividing by the *expected* cohort keeps the
    sensitivity fixed).
    """
    if averaging == "item":
        denom = np.maximum(sums.counts, 1.0)
        return sums.item_factors / denom[:, None], sums.item_bias / denom
    if averaging == "fedavg":
        n = expected_clients if expected_clients is not None else max(sums.n_clients, 1)
        return sums.item_factors / n, sums.item_bias / n
    raise ConfigError(f"strategy.averaging: {averaging!r} is not one of {AVERAGINGS}")


def wrmf_direction(glob: GlobalParams, sums: RoundSums, *, reg: float) -> np.ndarray:
    """The server's item step of federated ``"wrmf"``: a preconditioned gradient step.

    The loss's gradient at item ``i`` (halved) is ``m_i S q_i + g_i + reg q_i``,
    with ``S = sum_u p_u p_u^T`` (the ``user_gram`` sum: the full-catalogue
    term, a ``d x d`` matrix), ``m_i`` the item's missing-data weight (1
    unless ``model.pop-exponent``) and ``g_i`` minus the summed device
    directions (the terms on the users who touched ``i``). The step divides it
    by ``m_i S + (reg + h_i / d) I``, where ``h_i`` (the ``item_curvature``
    sum) is the trace of the touched users' extra curvature ``sum (c - m_i) p p^T``:
    with that curvature isotropic this is exactly the ALS item solve. One
    eigendecomposition of ``S`` makes every item's solve ``O(d^2)``. Each
    eigenvalue of the divisor is held at ``reg`` or above, the floor of the
    loss's true curvature, and ``S`` is replaced by its nearest positive
    semi-definite matrix (negative eigenvalues set to 0; a sum of ``p p^T``
    has none): under user-level DP the summed ``S`` and ``h`` are noisy and
    could otherwise turn the step around or blow it up. Without noise both
    are no-ops up to rounding.
    """
    missing = [k for k in WRMF_SEGMENTS if k not in sums.extra]
    if missing:
        raise ConfigError(f"model.loss 'wrmf': the round's sums lack the segments {missing}; this path "
                          "(DP, or a transport that does not carry them yet) cannot train it")
    d = glob.dim
    gram = np.asarray(sums.extra[ARRAY_USER_GRAM], np.float64).reshape(d, d)
    q = glob.item_factors.astype(np.float64)
    m = np.ones(glob.n_items) if glob.missing_weight is None else glob.missing_weight.astype(np.float64)
    eigval, eigvec = np.linalg.eigh((gram + gram.T) / 2)
    eigval = np.maximum(eigval, 0.0)  # a sum of p p^T is PSD: the nearest PSD matrix to a noisy one
    grad = m[:, None] * (((q @ eigvec) * eigval) @ eigvec.T) - np.asarray(sums.item_factors, np.float64) + reg * q
    shift = reg + np.asarray(sums.extra[ARRAY_ITEM_CURVATURE], np.float64) / d
    scaled = m[:, None] * eigval[None, :]
    denom = np.maximum(scaled + shift[:, None], reg)  # the true curvature is >= reg: noise (DP) cannot push below
    step: np.ndarray = ((grad @ eigvec) / (denom + 1e-12)) @ eigvec.T
    return -step


@dataclass(frozen=True)
class ServerOptConfig:
    """Server optimizer settings (``strategy.*`` keys in the run config)."""

    name: str = "sgd"
    lr: float = 3.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"strategy.optimizer: {self.name!r} is not one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise ConfigError(f"strategy.server-lr: must be > 0, got {self.lr}")
        for key, beta in (("strategy.beta1", self.beta1), ("strategy.beta2", self.beta2)):
            if not 0 <= beta < 1:
                raise ConfigError(f"{key}: must be in [0, 1), got {beta}")
        if self.eps <= 0:
            raise ConfigError(f"strategy.eps: must be > 0, got {self.eps}")

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> ServerOptConfig:
        """The server optimizer's ``strategy.*`` keys of a resolved flat configuration."""
        return cls(name=fc.get(flat, "strategy.optimizer", str), lr=fc.get(flat, "strategy.server-lr", float),
                   beta1=fc.get(flat, "strategy.beta1", float), beta2=fc.get(flat, "strategy.beta2", float),
                   eps=fc.get(flat, "strategy.eps", float))


@dataclass
class ServerOptimizer:
    """Applies pseudo-gradients to the global table; its state is part of a checkpoint."""

    config: ServerOptConfig
    step_count: int = 0
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def apply(self, glob: GlobalParams, delta_q: np.ndarray, delta_b: np.ndarray) -> GlobalParams:
        """Return the table moved along the (averaged) update direction."""
        self.step_count += 1
        step_q = self._step("item_factors", delta_q)
        step_b = self._step("item_bias", delta_b)
        return glob.replace(item_factors=(glob.item_factors + step_q).astype(np.float32),
                            item_bias=(glob.item_bias + step_b).astype(np.float32))

    def _step(self, name: str, delta: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.name == "sgd":
            return cfg.lr * delta
        v = self.state.setdefault(f"{name}.v", np.zeros_like(delta))
        if cfg.name == "adagrad":
            v += delta * delta
            return np.asarray(cfg.lr * delta / (np.sqrt(v) + cfg.eps))
        m = self.state.setdefault(f"{name}.m", np.zeros_like(delta))
        m *= cfg.beta1
        m += (1 - cfg.beta1) * delta
        v *= cfg.beta2
        v += (1 - cfg.beta2) * delta * delta
        return np.asarray(cfg.lr * m / (np.sqrt(v) + cfg.eps))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.state)

    def load_state(self, arrays: dict[str, np.ndarray], step_count: int) -> None:
        self.state = {k: np.array(v) for k, v in arrays.items()}
        self.step_count = step_count
