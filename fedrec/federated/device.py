"""What a device does in a round, independent of how messages travel.

The Flower ClientApp (``client/``), the in-process reference loop
(:func:`fedrec.federated.reference.train_in_process`) and, later, the client SDK call
these two functions (:func:`device_train`, :func:`device_evaluate`). A device reads its rows through an
:class:`InteractionSource` and keeps its private state (user factors, privacy
accountants) as named arrays in a :class:`DeviceState` mapping:
``Context.state`` in simulation, the encrypted on-device store in deployment.
A device may hold several users; their updates are summed before anything
leaves it.

Differential privacy (``privacy``, a :class:`~fedrec.federated.plan.PrivacyPlan`):

* ``rating``: each user trains with DP-SGD (Opacus) instead of the plain local
  step, on the run's public schedule (sampling rate, steps, divisor, noise
  multiplier: :class:`~fedrec.federated.plan.RatingLevelPlan`), with its own
  accountant kept in the state across rounds; a user whose budget is spent
  does not train and adds zeros. The device reports nothing about its budget:
  its epsilon is a public function of the rounds it took part in.
* ``user``: the plain local step, then the device's whole update (item factors,
  biases and the model's extra segments jointly) is clipped to ``dp.clip`` and, with distributed noise,
  noised with its share ``(sigma S)^2 / t_min`` (:func:`privatise_update`).
  This happens inside :func:`device_train`, so the secure-aggregation path,
  which masks what :func:`device_train` returns, only ever masks a
  privatised update.

In both modes the per-item ``counts`` are zeros: which items a user touched is
exactly what the guarantee hides, and DP-SGD does not cover the counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec import wire
from fedrec.data.partition import InteractionSource
from fedrec.federated.plan import PrivacyPlan, RatingLevelPlan, UserLevelPlan
from fedrec.metrics.core import MetricSums, ranking_sums, rating_sums
from fedrec.model.mf import MFConfig, score_items
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.privacy.clipping import clip_update
from fedrec.privacy.noise import add_noise
from fedrec.train.foldin import fold_in
from fedrec.train.local import LocalConfig, LocalUpdate, local_update

log = logging.getLogger(__name__)

DeviceState = MutableMapping[str, np.ndarray]

#: Random-stream tags keeping DP noise apart from the training streams.
_NOISE_STREAM = 0x0D9


@dataclass(frozen=True)
class DeviceRound:
    """A device's round output: the summed dense update of its users.

    ``metrics`` are the only scalars a device states in the clear: ``ok``.
    """

    update: LocalUpdate
    n_users: int
    metrics: dict[str, float] = field(default_factory=lambda: {wire.MET_OK: 1.0})


def device_train(source: InteractionSource, state: DeviceState, glob: GlobalParams, *, model: MFConfig,
                 local: LocalConfig, seed: int, round_: int, privacy: PrivacyPlan | None = None,
                 user_offset: int = 0, seeded_noise: bool = False) -> DeviceRound:
    """Train every user of the device; keep their LOCAL params in ``state``; sum the updates.

    Parameters
    ----------
    privacy
        The run's DP plan; None or ``unit = off`` trains without DP.
    user_offset
        Global index of the device's local user 0: user ``j`` draws its
        training randomness from ``[seed, round_, user_offset + j]``.
    seeded_noise
        Draw DP noise from ``seed``-derived streams (reproducible experiments
        with distinct ``user_offset`` per device). Otherwise, and always in
        ``dp.secure-mode``, from fresh OS entropy: noise an observer can
        regenerate is no noise.
    """
    if privacy is not None and privacy.rating is not None:
        return _rating_level_train(source, state, glob, model=model, plan=privacy.rating, seed=seed,
                                   round_=round_, user_offset=user_offset, seeded_noise=seeded_noise)
    out = _plain_train(source, state, glob, model=model, local=local, seed=seed, round_=round_,
                       user_offset=user_offset)
    if privacy is not None and privacy.user is not None:
        rng = _noise_rng(privacy.user.secure_mode, seeded_noise, seed, round_, user_offset)
        return DeviceRound(privatise_update(out.update, privacy.user, rng=rng), out.n_users)
    return out


def privatise_update(update: LocalUpdate, plan: UserLevelPlan, *, rng: np.random.Generator) -> LocalUpdate:
    """User-level DP on a device: joint L2 clip to ``S``, the device's noise share, no counts.

    The clip bounds the sensitivity of the sum to this device by ``S``: item
    factors, biases and every extra segment of the model (``"wrmf"``'s ``p
    p^T`` and curvature) are clipped together, so the bound is not ``S
    sqrt(parts)``; with distributed noise each device adds ``N(0, (sigma S)^2 /
    t_min)`` to every coordinate, so that any ``t_min`` or more survivors sum
    to the full noise. The norm before clipping is private and is not returned.
    """
    names = list(update.extra)
    parts, _ = clip_update([update.item_factors, update.item_bias, *(update.extra[k] for k in names)],
                           clip=plan.clip)
    std = plan.device_noise_std()
    if std > 0:
        parts = add_noise(parts, std=std, rng=rng, secure=plan.secure_mode)
    return LocalUpdate(parts[0], parts[1], np.zeros_like(update.counts), update.n_rows, update.loss,
                       dict(zip(names, parts[2:], strict=True)))


def device_evaluate(source: InteractionSource, state: DeviceState, glob: GlobalParams, *, model: MFConfig,
                    local: LocalConfig, scale: tuple[float, float] | None, seed: int,
                    privacy: PrivacyPlan | None = None) -> MetricSums:
    """Metrics on the device's held-out rows (sums and counts only).

    A user the device has not trained yet (not sampled so far) is folded in on
    the spot: closed-form for ratings, local steps for implicit feedback. This is
    the cold-start path: a new user gets recommendations without waiting for a round.

    Under rating-level DP with ``local.fold-in`` the device predicts with a user
    factor folded in against the current table for every user. DP-SGD cannot
    use that factor in training (it depends on all the user's ratings, so it
    would void the per-rating clip), but a prediction shown only to its own
    user is local post-processing of the released table: nothing about it
    leaves the device.
    """
    train, test = source.train(), source.test()
    total = MetricSums()
    refold = privacy is not None and privacy.rating is not None and local.fold_in and model.kind == "explicit"
    refold = refold or (model.kind == "implicit" and model.loss == "wrmf")  # exact solve, as cheap as a lookup
    for user in np.unique(test.users):
        tr, te = train.users == user, test.users == user
        params = None if refold else load_local(state, int(user))
        if params is None:
            params = _cold_start(glob, train.items[tr], train.ratings[tr], model, local,
                                 np.random.default_rng([seed, int(user)]), train.timestamps[tr], train.weights[tr])
        total.merge(evaluate_user(glob, params, train.items[tr], test.items[te], test.ratings[te],
                                    kind=model.kind, scale=scale))
    return total


def train_user(glob: GlobalParams, local: LocalParams | None, items: np.ndarray, ratings: np.ndarray, *,
                 model: MFConfig, config: LocalConfig, rng: np.random.Generator,
                 timestamps: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> tuple[LocalUpdate, LocalParams]:
    """One user's local step on a device: train, return (dense update, new LOCAL state)."""
    if local is None:
        local = initial_local(model, rng)
    return local_update(glob, local, items, ratings, model=model, config=config, rng=rng, timestamps=timestamps,
                        weights=weights)


def initial_local(model: MFConfig, rng: np.random.Generator) -> LocalParams:
    """A new device's user factor: small random for implicit (a zero factor gets no gradient)."""
    if model.kind == "implicit":
        return LocalParams(rng.normal(0.0, model.init_std, model.dim).astype(np.float32), 0.0)
    return LocalParams.zeros(model.dim)


def evaluate_user(glob: GlobalParams, local: LocalParams, train_items: np.ndarray, test_items: np.ndarray,
                    test_ratings: np.ndarray, *, kind: str, scale: tuple[float, float] | None,
                    ks: tuple[int, ...] = (10,)) -> MetricSums:
    """Metrics on one user's held-out rows, as sums and counts only."""
    if len(test_items) == 0:
        return MetricSums()
    scores = score_items(glob, local)
    if kind == "explicit":
        return rating_sums(scores[test_items], test_ratings, scale)
    return ranking_sums(scores[None, :].copy(), [train_items], [test_items], ks=ks)


def _plain_train(source: InteractionSource, state: DeviceState, glob: GlobalParams, *, model: MFConfig,
                 local: LocalConfig, seed: int, round_: int, user_offset: int) -> DeviceRound:
    rows = source.train()
    total: list[np.ndarray] | None = None
    extra: dict[str, np.ndarray] = {}
    n_rows, loss, users = 0, 0.0, np.unique(rows.users)
    for user in users:
        mask = rows.users == user
        rng = np.random.default_rng([seed, round_, user_offset + int(user)])
        update, new_local = train_user(glob, load_local(state, int(user)), rows.items[mask], rows.ratings[mask],
                                       model=model, config=local, rng=rng, timestamps=rows.timestamps[mask],
                                       weights=_weights_of(model, rows.weights[mask]))
        save_local(state, int(user), new_local)
        parts = [update.item_factors, update.item_bias, update.counts]
        total = parts if total is None else [a + b for a, b in zip(total, parts, strict=True)]
        extra = {k: extra[k] + v if k in extra else v for k, v in update.extra.items()}
        n_rows += update.n_rows
        loss += update.loss * update.n_rows
    if total is None:
        total = [np.zeros_like(glob.item_factors), np.zeros_like(glob.item_bias), np.zeros(glob.n_items, np.float32)]
    return DeviceRound(LocalUpdate(total[0], total[1], total[2], n_rows, loss / max(n_rows, 1), extra), len(users))


def _rating_level_train(source: InteractionSource, state: DeviceState, glob: GlobalParams, *, model: MFConfig,
                        plan: RatingLevelPlan, seed: int, round_: int, user_offset: int,
                        seeded_noise: bool) -> DeviceRound:
    """DP-SGD for each user; the spent budget is kept per user and carried across rounds.

    The schedule and noise multiplier are the run's public ones, so what a user
    has spent is a public function of its rounds: nothing about it is sent. An
    exhausted user contributes zeros to the device's update, which keeps its
    shape (under secure aggregation, a masked zero like any other vector).
    """
    from fedrec.privacy.local_dp import dp_local_train

    rows = source.train()
    users = np.unique(rows.users)
    dq = np.zeros(glob.item_factors.shape, np.float64)
    db = np.zeros(glob.n_items, np.float64)
    exhausted, n_rows, loss = 0, 0, 0.0
    for user in users:
        mask = rows.users == user
        items, ratings = rows.items[mask], rows.ratings[mask]
        params = load_local(state, int(user)) or LocalParams.zeros(model.dim)
        torch_seed = None
        if seeded_noise and not plan.secure_mode:
            torch_seed = int(np.random.SeedSequence([seed, round_, user_offset + int(user), _NOISE_STREAM])
                             .generate_state(1)[0])
        result = dp_local_train(
            item_factors=glob.item_factors, item_bias=glob.item_bias, global_mean=glob.global_mean,
            user_factor=params.user_factor, user_bias=params.user_bias, items=items, ratings=ratings,
            lr=plan.lr, epochs=plan.epochs, batch_size=plan.batch_size, reg=model.reg,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.clip, delta=plan.delta,
            accountant_state=load_accountant(state, int(user)), accountant=plan.accountant,
            secure_mode=plan.secure_mode, seed=torch_seed, epsilon_budget=plan.epsilon_budget,
            schedule=plan.schedule(len(ratings)),
        )
        save_accountant(state, int(user), result.accountant_state)
        if result.budget_exhausted:
            exhausted += 1
            continue
        save_local(state, int(user), LocalParams(result.user_factor, result.user_bias))
        dq += result.delta_item_factors
        db += result.delta_item_bias
        n_rows += len(ratings)
    if len(users) and exhausted == len(users):
        log.info("device: every user's budget dp.epsilon=%s is spent; sending a zero update", plan.epsilon)
    update = LocalUpdate(dq.astype(np.float32), db.astype(np.float32), np.zeros(glob.n_items, np.float32),
                         n_rows, loss)
    return DeviceRound(update, len(users))


def _noise_rng(secure: bool, seeded: bool, seed: int, round_: int, user_offset: int) -> np.random.Generator:
    if seeded and not secure:
        return np.random.default_rng([seed, round_, user_offset, _NOISE_STREAM])
    return np.random.default_rng()


def _cold_start(glob: GlobalParams, items: np.ndarray, ratings: np.ndarray, model: MFConfig, local: LocalConfig,
                rng: np.random.Generator, timestamps: np.ndarray | None = None,
                weights: np.ndarray | None = None) -> LocalParams:
    if model.kind == "explicit":
        return fold_in(glob, items, ratings, reg=model.reg, bias_reg=model.bias_reg)
    _, params = train_user(glob, initial_local(model, rng), items, ratings, model=model, config=local, rng=rng,
                           timestamps=timestamps, weights=_weights_of(model, weights))
    return params


def _weights_of(model: MFConfig, weights: np.ndarray | None) -> np.ndarray | None:
    """The device's confidence weights (``csv.weight-col``) for an implicit model; ``None`` when all are 1.

    They never leave the device: they scale the positives' weight in the local
    loss (sampled-negative models) or their confidence (``"wrmf"``), exactly as
    the centralized trainer uses :attr:`Interactions.weights`.
    """
    if model.kind != "implicit" or weights is None or np.all(weights == 1.0):
        return None
    return np.asarray(weights, np.float64)


def load_local(state: DeviceState, user: int) -> LocalParams | None:
    """The user's stored LOCAL parameters, or ``None`` for a user not seen before."""
    key = f"user.{user}"
    if f"{key}.factor" not in state:
        return None
    return LocalParams(np.asarray(state[f"{key}.factor"], np.float32), float(np.asarray(state[f"{key}.bias"])[0]))


def save_local(state: DeviceState, user: int, params: LocalParams) -> None:
    state[f"user.{user}.factor"] = np.asarray(params.user_factor, np.float32)
    state[f"user.{user}.bias"] = np.array([params.user_bias], np.float64)


def accountant_key(user: int) -> str:
    """State key of a user's rating-level accountant (JSON bytes as ``uint8``)."""
    return f"{wire.STATE_PRIVACY}.user.{user}.accountant"


def load_accountant(state: DeviceState, user: int) -> dict[str, Any] | None:
    """The user's accountant history, or None before its first DP round."""
    raw = state.get(accountant_key(user))
    if raw is None:
        return None
    loaded: dict[str, Any] = json.loads(np.asarray(raw, np.uint8).tobytes().decode())
    return loaded


def save_accountant(state: DeviceState, user: int, accountant_state: dict[str, Any]) -> None:
    state[accountant_key(user)] = np.frombuffer(json.dumps(accountant_state).encode(), np.uint8).copy()
