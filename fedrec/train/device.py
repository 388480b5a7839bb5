"""What a device does in a round, independent of how messages travel.

The Flower ClientApp (``client/``) and, later, the client SDK call these two
functions. A device reads its rows through an :class:`InteractionSource` and
keeps its private state (user factors, privacy accountant) as named arrays in a
:class:`DeviceState` mapping: ``Context.state`` in simulation, the encrypted
on-device store in deployment. A device may hold several users; their updates
are summed before anything leaves it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

import numpy as np

from fedrec import wire
from fedrec.data.partition import InteractionSource
from fedrec.metrics.core import MetricSums
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.train.federated import client_evaluate, client_round, initial_local
from fedrec.train.foldin import fold_in
from fedrec.train.local import LocalConfig, LocalUpdate

DeviceState = MutableMapping[str, np.ndarray]


@dataclass(frozen=True)
class DeviceRound:
    """A device's round output: the summed dense update of its users.

    ``metrics`` are the only scalars a device states in the clear (``ok``, and
    under rating-level DP its spent ``epsilon`` and ``budget-exhausted``).
    """

    update: LocalUpdate
    n_users: int
    metrics: dict[str, float] = field(default_factory=lambda: {wire.MET_OK: 1.0})


def device_train(source: InteractionSource, state: DeviceState, glob: GlobalParams, *, model: MFConfig,
                 local: LocalConfig, seed: int, round_: int) -> DeviceRound:
    """Train every user of the device; keep their LOCAL params in ``state``; sum the updates."""
    rows = source.train()
    total: list[np.ndarray] | None = None
    n_rows, loss, users = 0, 0.0, np.unique(rows.users)
    for user in users:
        mask = rows.users == user
        rng = np.random.default_rng([seed, round_, int(user)])
        update, new_local = client_round(glob, load_local(state, int(user)), rows.items[mask], rows.ratings[mask],
                                         model=model, config=local, rng=rng)
        save_local(state, int(user), new_local)
        parts = [update.item_factors, update.item_bias, update.counts]
        total = parts if total is None else [a + b for a, b in zip(total, parts, strict=True)]
        n_rows += update.n_rows
        loss += update.loss * update.n_rows
    if total is None:
        total = [np.zeros_like(glob.item_factors), np.zeros_like(glob.item_bias), np.zeros(glob.n_items, np.float32)]
    return DeviceRound(LocalUpdate(total[0], total[1], total[2], n_rows, loss / max(n_rows, 1)), len(users))


def device_evaluate(source: InteractionSource, state: DeviceState, glob: GlobalParams, *, model: MFConfig,
                    local: LocalConfig, scale: tuple[float, float] | None, seed: int) -> MetricSums:
    """Metrics on the device's held-out rows (sums and counts only).

    A user the device has not trained yet (not sampled so far) is folded in on
    the spot: closed-form for ratings, local steps for implicit feedback. This is
    the cold-start path: a new user gets recommendations without waiting for a round.
    """
    train, test = source.train(), source.test()
    total = MetricSums()
    for user in np.unique(test.users):
        tr, te = train.users == user, test.users == user
        params = load_local(state, int(user)) or _cold_start(glob, train.items[tr], train.ratings[tr], model, local,
                                                              np.random.default_rng([seed, int(user)]))
        total.merge(client_evaluate(glob, params, train.items[tr], test.items[te], test.ratings[te],
                                    kind=model.kind, scale=scale))
    return total


def _cold_start(glob: GlobalParams, items: np.ndarray, ratings: np.ndarray, model: MFConfig, local: LocalConfig,
                rng: np.random.Generator) -> LocalParams:
    if model.kind == "explicit":
        return fold_in(glob, items, ratings, reg=model.reg, bias_reg=model.bias_reg)
    _, params = client_round(glob, initial_local(model, rng), items, ratings, model=model, config=local, rng=rng)
    return params


def load_local(state: DeviceState, user: int) -> LocalParams | None:
    """The user's stored LOCAL parameters, or ``None`` for a user not seen before."""
    key = f"user.{user}"
    if f"{key}.factor" not in state:
        return None
    return LocalParams(np.asarray(state[f"{key}.factor"], np.float32), float(np.asarray(state[f"{key}.bias"])[0]))


def save_local(state: DeviceState, user: int, params: LocalParams) -> None:
    state[f"user.{user}.factor"] = np.asarray(params.user_factor, np.float32)
    state[f"user.{user}.bias"] = np.array([params.user_bias], np.float32)
