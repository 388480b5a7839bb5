"""Rating-level differentially private local training of biased matrix factorisation.

One device holds one user's ratings. It trains the explicit biased MF model

    r_hat = mu + b_u + b_i + p_u . q_i,
    loss  = (r - r_hat)^2 + reg * (|p_u|^2 + |q_i|^2)      (per rating)

with DP-SGD from Opacus, one *sample* being one rating, and sends back dense
deltas of the shared item table. The protected record is a single rating: the
released deltas are (epsilon, delta)-DP with respect to adding or removing one
rating of this user, composed over every round the device takes part in.

Three choices carry the guarantee:

* **Gathered rows, full-table noise.** The model holds only the ``m`` item rows
  the user rated (``nn.Embedding(m, d)``), so per-sample gradients cost
  ``batch x m x d`` instead of ``batch x n_items x d``. A full-table DP-SGD would
  however also add noise to every *untouched* row at every step; leaving those
  rows clean would reveal which items were rated. With plain SGD (no momentum,
  no weight decay) an untouched row moves only by that noise, ``-lr / B`` times
  ``N(0, (sigma C)^2)`` per step (Opacus adds ``N(0, (sigma C)^2)`` to the sum
  of clipped per-sample gradients and divides by the expected batch size ``B``),
  so its delta over ``T`` steps is drawn once with variance ``T (lr sigma C /
  B)^2`` — the same distribution, by Opacus's own noise sampler.
* **The user's own parameters are trained privately too.** ``p_u`` and ``b_u``
  shape every later item gradient; updating them without noise would leak
  through the next steps. They are part of the DP-SGD model, so everything
  the device releases is post-processing of noisy steps.
* **Float64 arithmetic, float32 deltas.** Training in float64 and rounding the
  delta once makes touched and untouched rows equally "continuous" float32
  values; a float32 difference of float32 tables would sit on the grid of the
  touched rows' own values and mark them.

Only the deltas may leave the device. Per-item rating counts (e.g. for
weighted averaging) reveal which items were rated; if they are sent at all
they must be hidden by secure aggregation *and* privatised themselves, since
the released sum would otherwise carry them in the clear.

The sampling rate and number of steps follow from the device's rating count
(:func:`~fedrec.privacy.calibration.local_schedule`); the accounting treats
that count as public, as Opacus does when it derives the rate from a dataset's
length.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fedrec.errors import ConfigError, DataError, ModelError, PrivacyError
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.privacy.calibration import LocalSchedule, local_schedule

logger = logging.getLogger(__name__)

_DTYPE = torch.float64


@dataclass(frozen=True)
class DPLocalResult:
    """What one DP local round produces.

    Attributes
    ----------
    delta_item_factors
        Dense ``(n_items, d)`` float32 change of the item table; every row is
        noisy when ``noise_multiplier > 0``. Safe to release.
    delta_item_bias
        Dense ``(n_items,)`` float32 change of the item biases. Safe to release.
    user_factor, user_bias
        The device's new private parameters; they stay on the device.
    accountant_state
        Flat, JSON-able accountant history to pass to the next round.
    epsilon
        Epsilon spent so far on this device (rating-level, at the given delta).
    steps
        Optimizer steps taken in this call (0 when the budget is exhausted).
    budget_exhausted
        True when one more round would exceed ``epsilon_budget``: no training
        happened, the deltas are zero and the state is unchanged.
    """

    delta_item_factors: np.ndarray
    delta_item_bias: np.ndarray
    user_factor: np.ndarray
    user_bias: float
    accountant_state: dict[str, Any]
    epsilon: float
    steps: int
    budget_exhausted: bool


@dataclass(frozen=True)
class LocalResult:
    """What one non-private local round produces (dense deltas, new user state)."""

    delta_item_factors: np.ndarray
    delta_item_bias: np.ndarray
    user_factor: np.ndarray
    user_bias: float
    steps: int


@dataclass(frozen=True)
class _Problem:
    """Validated inputs, gathered to the rows the user rated (float64)."""

    n_items: int
    dim: int
    rows: np.ndarray
    local_items: np.ndarray
    ratings: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    user_factor: np.ndarray
    user_bias: float
    global_mean: float


@dataclass(frozen=True)
class _Trained:
    item_factors: np.ndarray
    item_bias: np.ndarray
    user_factor: np.ndarray
    user_bias: float
    steps: int


# --------------------------------------------------------------------------- public API


def dp_local_train(
    *,
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    global_mean: float,
    user_factor: np.ndarray,
    user_bias: float,
    items: np.ndarray,
    ratings: np.ndarray,
    lr: float,
    epochs: int,
    batch_size: int,
    reg: float,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    accountant_state: dict[str, Any] | None,
    accountant: str = "rdp",
    secure_mode: bool = False,
    seed: int | None = None,
    epsilon_budget: float = math.inf,
) -> DPLocalResult:
    """One round of rating-level DP-SGD on a device; returns dense noisy deltas.

    Parameters
    ----------
    item_factors, item_bias, global_mean
        The global item table ``Q`` (``n_items x d``), item biases and mean
        rating, as sent by the server; not modified.
    user_factor, user_bias
        The device's private ``p_u`` (``d``) and ``b_u``.
    items, ratings
        The user's ratings: int item indices into the global table and values.
    lr, epochs, batch_size, reg
        Plain-SGD learning rate, local epochs, *expected* (Poisson) batch size,
        L2 regularisation inside each per-rating loss.
    noise_multiplier, max_grad_norm
        DP-SGD noise multiplier ``sigma`` and per-rating clip bound ``C``.
    delta
        Delta at which the spent epsilon is reported.
    accountant_state
        The ``accountant_state`` of this device's previous round, or None on
        its first round; the spent budget is carried forward, never reset.
    accountant
        Opacus accountant: ``"rdp"``, ``"prv"`` or ``"gdp"``.
    secure_mode
        Use Opacus's secure mode (CSPRNG noise and sampling, floating-point
        attack mitigation). Requires ``torchcsprng``; excludes ``seed``.
    seed
        Seed for sampling and noise, for reproducible experiments only.
    epsilon_budget
        Device budget; a round that would exceed it is refused *before* any
        data is touched.

    Raises
    ------
    DataError, ModelError
        For malformed ratings or parameters that do not fit together.
    ConfigError
        For invalid ``lr``, ``epochs``, ``batch_size`` or ``reg``.
    PrivacyError
        For invalid privacy parameters, a foreign accountant state, or
        ``secure_mode`` without ``torchcsprng``.
    """
    _check_hyperparameters(lr=lr, epochs=epochs, batch_size=batch_size, reg=reg)
    _check_dp_parameters(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm)
    problem = _gather(
        item_factors=item_factors, item_bias=item_bias, global_mean=global_mean,
        user_factor=user_factor, user_bias=user_bias, items=items, ratings=ratings,
    )
    generator = _generator(secure_mode=secure_mode, seed=seed)
    ledger = PrivacyAccountant(accountant, delta=delta, unit="rating")
    if accountant_state is not None:
        ledger.load_state_dict(accountant_state)
    schedule = local_schedule(
        n_ratings=len(problem.ratings), batch_size=batch_size, epochs=epochs
    )
    if ledger.would_exceed(
        epsilon_budget=epsilon_budget, noise_multiplier=noise_multiplier,
        sample_rate=schedule.sample_rate, steps=schedule.steps,
    ):
        logger.info("device budget %.4g would be exceeded; skipping round", epsilon_budget)
        return _exhausted(problem, ledger)

    def record(optimizer: DPOptimizer) -> None:
        ledger.step(
            noise_multiplier=optimizer.noise_multiplier,
            sample_rate=schedule.sample_rate * optimizer.accumulated_iterations,
        )

    trained = _run_dp_sgd(
        problem, schedule=schedule, lr=lr, reg=reg, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, generator=generator, secure_mode=secure_mode,
        on_step=record,
    )
    untouched_std = untouched_row_noise_std(
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, lr=lr,
        expected_batch_size=schedule.expected_batch_size, steps=trained.steps,
    )
    dq, db = _dense_deltas(
        problem, trained, untouched_std=untouched_std, generator=generator,
        secure_mode=secure_mode,
    )
    epsilon = ledger.epsilon()
    logger.debug(
        "dp local round: %d ratings, %d steps, q=%.4g, sigma=%.4g, eps=%.4g",
        len(problem.ratings), trained.steps, schedule.sample_rate, noise_multiplier, epsilon,
    )
    return DPLocalResult(
        delta_item_factors=dq,
        delta_item_bias=db,
        user_factor=trained.user_factor.astype(np.float32),
        user_bias=float(trained.user_bias),
        accountant_state=ledger.state_dict(),
        epsilon=epsilon,
        steps=trained.steps,
        budget_exhausted=False,
    )


def local_train(
    *,
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    global_mean: float,
    user_factor: np.ndarray,
    user_bias: float,
    items: np.ndarray,
    ratings: np.ndarray,
    lr: float,
    epochs: int,
    batch_size: int,
    reg: float,
    seed: int | None = None,
) -> LocalResult:
    """Non-private local training of the same model: the baseline of the DP trainer.

    Mini-batch SGD over shuffled ratings with mean-reduced per-rating losses,
    on the gathered rows, in numpy. Deltas are dense for a drop-in comparison
    but non-zero only on rated rows — which is exactly why they must not be
    released without secure aggregation.
    """
    _check_hyperparameters(lr=lr, epochs=epochs, batch_size=batch_size, reg=reg)
    problem = _gather(
        item_factors=item_factors, item_bias=item_bias, global_mean=global_mean,
        user_factor=user_factor, user_bias=user_bias, items=items, ratings=ratings,
    )
    trained = _run_sgd(problem, lr=lr, epochs=epochs, batch_size=batch_size, reg=reg,
                       rng=np.random.default_rng(seed))
    dq, db = _dense_deltas(problem, trained, untouched_std=0.0, generator=None,
                           secure_mode=False)
    return LocalResult(
        delta_item_factors=dq,
        delta_item_bias=db,
        user_factor=trained.user_factor.astype(np.float32),
        user_bias=float(trained.user_bias),
        steps=trained.steps,
    )


def untouched_row_noise_std(
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    lr: float,
    expected_batch_size: float,
    steps: int,
) -> float:
    """Std of an untouched row's delta: ``sqrt(T) * lr * sigma * C / B``.

    Each Opacus step adds ``N(0, (sigma C)^2)`` to the clipped gradient sum and
    divides by ``B`` (``loss_reduction="mean"``); plain SGD scales by ``lr``.
    """
    return math.sqrt(steps) * lr * noise_multiplier * max_grad_norm / expected_batch_size


# --------------------------------------------------------------------------- the model


class _GatheredMF(nn.Module):
    """Biased MF over the gathered item rows of one user; forward gives per-rating losses."""

    def __init__(self, problem: _Problem, *, reg: float) -> None:
        super().__init__()
        m, d = problem.item_factors.shape
        self.item_factors = _embedding(problem.item_factors)
        self.item_bias = _embedding(problem.item_bias.reshape(m, 1))
        self.user_factor = _embedding(problem.user_factor.reshape(1, d))
        self.user_bias = _embedding(np.array([[problem.user_bias]]))
        self.global_mean = float(problem.global_mean)
        self.reg = float(reg)

    def forward(self, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        user = torch.zeros_like(items)
        q = self.item_factors(items)
        p = self.user_factor(user)
        pred = (
            self.global_mean
            + self.user_bias(user).squeeze(-1)
            + self.item_bias(items).squeeze(-1)
            + (p * q).sum(-1)
        )
        penalty = (p * p).sum(-1) + (q * q).sum(-1)
        loss: torch.Tensor = (ratings - pred) ** 2 + self.reg * penalty
        return loss


def _embedding(weight: np.ndarray) -> nn.Embedding:
    rows, dim = weight.shape
    layer = nn.Embedding(rows, dim, dtype=_DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=_DTYPE))
    return layer


def _snapshot(model: _GatheredMF, steps: int) -> _Trained:
    def w(layer: nn.Embedding) -> np.ndarray:
        return layer.weight.detach().cpu().numpy().astype(np.float64)

    return _Trained(
        item_factors=w(model.item_factors),
        item_bias=w(model.item_bias).reshape(-1),
        user_factor=w(model.user_factor).reshape(-1),
        user_bias=float(w(model.user_bias)[0, 0]),
        steps=steps,
    )


# --------------------------------------------------------------------------- training


def _run_dp_sgd(
    problem: _Problem,
    *,
    schedule: LocalSchedule,
    lr: float,
    reg: float,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator,
    secure_mode: bool,
    on_step: Callable[[DPOptimizer], None] | None = None,
) -> _Trained:
    """DP-SGD over ``problem``'s rows with Opacus; Poisson batches, plain SGD.

    Batches come from Opacus's ``UniformWithReplacementSampler`` (the sampler
    of ``DPDataLoader``) indexing the tensors directly, which keeps a step cheap
    for a few hundred ratings. The model's loss is summed (exact per-sample
    gradients) while the optimizer divides the noisy sum by the expected batch
    size, the standard DP-SGD average that does not depend on the realised
    batch size.
    """
    model = _GatheredMF(problem, reg=reg)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=lr),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=schedule.expected_batch_size,
        loss_reduction="mean",
        generator=generator,
        secure_mode=secure_mode,
    )
    if on_step is not None:
        optimizer.attach_step_hook(on_step)
    sampler = UniformWithReplacementSampler(
        num_samples=schedule.n_ratings,
        sample_rate=schedule.sample_rate,
        generator=generator,
        steps=schedule.steps,
    )
    items_t = torch.as_tensor(problem.local_items, dtype=torch.long)
    ratings_t = torch.as_tensor(problem.ratings, dtype=_DTYPE)
    steps = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for batch in sampler:
            index = torch.as_tensor(batch, dtype=torch.long)
            optimizer.zero_grad(set_to_none=True)
            gsm(items_t[index], ratings_t[index]).sum().backward()
            optimizer.step()
            steps += 1
    gsm.cleanup()
    return _snapshot(model, steps)


def _run_sgd(
    problem: _Problem,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    reg: float,
    rng: np.random.Generator,
) -> _Trained:
    """Plain mini-batch SGD with the same per-rating loss, mean-reduced."""
    q = problem.item_factors.copy()
    b = problem.item_bias.copy()
    p = problem.user_factor.copy()
    bu = problem.user_bias
    n = len(problem.ratings)
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            i, r = problem.local_items[idx], problem.ratings[idx]
            err = r - (problem.global_mean + bu + b[i] + q[i] @ p)
            scale = 2.0 / len(idx)
            grad_q = scale * (-err[:, None] * p[None, :] + reg * q[i])
            grad_p = scale * (-(err[:, None] * q[i]).sum(0) + reg * len(idx) * p)
            grad_b = scale * -err
            np.add.at(q, i, -lr * grad_q)
            np.add.at(b, i, -lr * grad_b)
            p = p - lr * grad_p
            bu = bu - lr * scale * -float(err.sum())
            steps += 1
    return _Trained(item_factors=q, item_bias=b, user_factor=p, user_bias=bu, steps=steps)


# --------------------------------------------------------------------------- outputs


def _dense_deltas(
    problem: _Problem,
    trained: _Trained,
    *,
    untouched_std: float,
    generator: torch.Generator | None,
    secure_mode: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter gathered-row deltas into full tables; fill the rest with their noise."""
    untouched = np.ones(problem.n_items, dtype=bool)
    untouched[problem.rows] = False
    dq = np.zeros((problem.n_items, problem.dim), dtype=np.float64)
    db = np.zeros(problem.n_items, dtype=np.float64)
    if untouched_std > 0:
        n_free = int(untouched.sum())
        dq[untouched] = _noise((n_free, problem.dim), untouched_std, generator, secure_mode)
        db[untouched] = _noise((n_free,), untouched_std, generator, secure_mode)
    dq[problem.rows] = trained.item_factors - problem.item_factors
    db[problem.rows] = trained.item_bias - problem.item_bias
    return dq.astype(np.float32), db.astype(np.float32)


def _noise(
    shape: tuple[int, ...], std: float, generator: torch.Generator | None, secure_mode: bool
) -> np.ndarray:
    """Opacus's own Gaussian sampler (secure-mode construction included)."""
    reference = torch.zeros(shape, dtype=_DTYPE)
    noise = _generate_noise(std=std, reference=reference, generator=generator,
                            secure_mode=secure_mode)
    return np.asarray(noise.to(_DTYPE).numpy())


def _exhausted(problem: _Problem, ledger: PrivacyAccountant) -> DPLocalResult:
    return DPLocalResult(
        delta_item_factors=np.zeros((problem.n_items, problem.dim), dtype=np.float32),
        delta_item_bias=np.zeros(problem.n_items, dtype=np.float32),
        user_factor=problem.user_factor.astype(np.float32),
        user_bias=float(problem.user_bias),
        accountant_state=ledger.state_dict(),
        epsilon=ledger.epsilon(),
        steps=0,
        budget_exhausted=True,
    )


# --------------------------------------------------------------------------- randomness


def _generator(*, secure_mode: bool, seed: int | None) -> torch.Generator:
    """A torch generator: CSPRNG-backed in secure mode, seeded otherwise."""
    if secure_mode:
        if seed is not None:
            raise PrivacyError("secure_mode excludes a seed: secure noise must not be replayable")
        return _secure_generator()
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def _secure_generator() -> torch.Generator:
    """The ``/dev/urandom`` generator Opacus's ``PrivacyEngine`` builds in secure mode."""
    try:
        import torchcsprng
    except ImportError as exc:
        raise PrivacyError(
            "secure_mode=True needs the torchcsprng package (Opacus's secure RNG), which "
            "is not installed. Its PyPI releases pin torch 1.8; for torch 2.x build it "
            "from source: pip install git+https://github.com/pytorch/csprng.git "
            "(see https://github.com/pytorch/csprng#installation), or run with "
            "secure_mode=False for experiments."
        ) from exc
    generator: torch.Generator = torchcsprng.create_random_device_generator("/dev/urandom")
    return generator


# --------------------------------------------------------------------------- validation


def _gather(
    *,
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    global_mean: float,
    user_factor: np.ndarray,
    user_bias: float,
    items: np.ndarray,
    ratings: np.ndarray,
    full_table: bool = False,
) -> _Problem:
    """Validate the model and the ratings, and gather the rated rows in float64.

    ``full_table=True`` keeps every row instead (the naive layout whose
    per-sample gradients are ``batch x n_items x d``), for comparisons only.
    """
    table = np.asarray(item_factors)
    bias = np.asarray(item_bias)
    user = np.asarray(user_factor)
    if table.ndim != 2:
        raise ModelError(f"item_factors must be 2-D (n_items, d), got shape {table.shape}")
    n_items, dim = table.shape
    if bias.shape != (n_items,):
        raise ModelError(f"item_bias must have shape ({n_items},), got {bias.shape}")
    if user.shape != (dim,):
        raise ModelError(f"user_factor must have shape ({dim},), got {user.shape}")
    for name, value in (("global_mean", global_mean), ("user_bias", user_bias)):
        if not np.isfinite(value):
            raise ModelError(f"{name} must be finite, got {value!r}")
    idx, vals = _check_ratings(items, ratings, n_items)
    if full_table:
        rows, local = np.arange(n_items), idx
    else:
        rows, local = np.unique(idx, return_inverse=True)
    return _Problem(
        n_items=n_items,
        dim=dim,
        rows=rows,
        local_items=local.reshape(-1).astype(np.int64),
        ratings=vals,
        item_factors=table[rows].astype(np.float64),
        item_bias=bias[rows].astype(np.float64),
        user_factor=user.astype(np.float64),
        user_bias=float(user_bias),
        global_mean=float(global_mean),
    )


def _check_ratings(
    items: np.ndarray, ratings: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(items)
    vals = np.asarray(ratings)
    if idx.ndim != 1 or vals.ndim != 1 or len(idx) != len(vals):
        raise DataError(
            f"items and ratings must be 1-D of equal length, got {idx.shape} and {vals.shape}"
        )
    if len(idx) == 0:
        raise DataError("no ratings: a device with no ratings has nothing to train on")
    if not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"items must be integer indices, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n_items:
        raise DataError(f"items must be in [0, {n_items}), got range [{idx.min()}, {idx.max()}]")
    vals = vals.astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise DataError("ratings must be finite")
    return idx.astype(np.int64), vals


def _check_hyperparameters(*, lr: float, epochs: int, batch_size: int, reg: float) -> None:
    if not _finite(lr) or lr <= 0:
        raise ConfigError(f"lr: must be finite and > 0, got {lr!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs: must be an integer >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    if not _finite(reg) or reg < 0:
        raise ConfigError(f"reg: must be finite and >= 0, got {reg!r}")


def _check_dp_parameters(*, noise_multiplier: float, max_grad_norm: float) -> None:
    if not _finite(noise_multiplier) or noise_multiplier < 0:
        raise PrivacyError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not _finite(max_grad_norm) or max_grad_norm <= 0:
        raise PrivacyError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")


def _finite(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
