"""Privacy accounting: a thin facade over the Opacus accountants.

All privacy mathematics is Opacus's (``opacus.accountants``); this module only
keeps the *history* of Gaussian-mechanism invocations — ``(noise_multiplier,
sample_rate, steps)`` triples — and asks Opacus for epsilon. Keeping the history
as plain data is what lets a device or a server persist its spent budget across
rounds (a Flower ``ConfigRecord`` or a device store) instead of losing it when a
privacy engine is rebuilt.

The bookkeeping (:func:`merge_step`) is kept apart from the maths
(:func:`epsilon_of`) so each can be checked on its own.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedrec.errors import PrivacyError

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

# Opacus (and with it torch, seconds of import time) loads on first use: a run without DP never pays for it.

logger = logging.getLogger(__name__)

AccountantKind = Literal["rdp", "prv", "gdp"]
ACCOUNTANT_KINDS: tuple[str, ...] = ("rdp", "prv", "gdp")
PrivacyUnit = Literal["rating", "user"]
PRIVACY_UNITS: tuple[str, ...] = ("rating", "user")

#: One Gaussian-mechanism phase: (noise_multiplier, sample_rate, steps).
Entry = tuple[float, float, int]
History = tuple[Entry, ...]

STATE_KEYS: tuple[str, ...] = (
    "accountant",
    "delta",
    "unit",
    "noise_multipliers",
    "sample_rates",
    "steps",
)


# --------------------------------------------------------------------------- bookkeeping


def validate_step(*, noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Reject a mechanism invocation that no accountant can interpret.

    Raises
    ------
    PrivacyError
        When the noise multiplier is negative or not finite, the sample rate is
        outside ``(0, 1]`` or the step count is negative or not an integer.
    """
    if not _is_real(noise_multiplier) or not math.isfinite(noise_multiplier):
        raise PrivacyError(f"noise_multiplier must be a finite number, got {noise_multiplier!r}")
    if noise_multiplier < 0:
        raise PrivacyError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    if not _is_real(sample_rate) or not 0.0 < sample_rate <= 1.0:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise PrivacyError(f"steps must be an integer >= 0, got {steps!r}")


def merge_step(
    history: History,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    kind: str = "rdp",
) -> History:
    """Append ``steps`` invocations to a history, merging equal consecutive phases.

    This mirrors ``IAccountant.step`` of Opacus called ``steps`` times, without
    the loop, so long runs stay cheap to record.

    Raises
    ------
    PrivacyError
        For invalid parameters, or for ``kind="gdp"`` when the parameters change
        (the Gaussian accountant only composes a homogeneous mechanism).
    """
    validate_step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    if steps == 0:
        return history
    sigma, q, n = float(noise_multiplier), float(sample_rate), int(steps)
    if history and history[-1][0] == sigma and history[-1][1] == q:
        last = history[-1]
        return (*history[:-1], (sigma, q, last[2] + n))
    if kind == "gdp" and history:
        raise PrivacyError(
            "the gdp accountant needs a constant noise_multiplier and sample_rate; "
            f"history has {history[-1][:2]}, step asks for {(sigma, q)}"
        )
    return (*history, (sigma, q, n))


# --------------------------------------------------------------------------- mathematics


def epsilon_of(kind: str, history: History, delta: float) -> float:
    """Epsilon of a history at ``delta`` according to the Opacus accountant ``kind``.

    A phase with a zero noise multiplier releases its input unperturbed, so the
    result is ``inf`` (Opacus's RDP says so itself; PRV and GDP fail instead).
    """
    _check_kind(kind)
    _check_delta(delta)
    history = tuple((float(s), float(q), int(n)) for s, q, n in history if n > 0)
    if not history:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in history):
        return math.inf
    return _epsilon_cached(kind, history, float(delta))


@lru_cache(maxsize=4096)
def _epsilon_cached(kind: str, history: History, delta: float) -> float:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind == "rdp":
            eps = _rdp_epsilon(history, delta)
        else:
            eps = float(opacus_accountant(kind, history).get_epsilon(delta=delta))
    for w in caught:
        logger.debug("opacus %s accountant: %s", kind, w.message)
    return eps


def _rdp_epsilon(history: History, delta: float) -> float:
    """``RDPAccountant.get_epsilon`` with the per-phase RDP curves memoised.

    ``compute_rdp`` is linear in ``steps`` (it returns ``rdp * steps``), so the
    curve of one step of each ``(q, sigma)`` is computed once and scaled; the
    sum and the conversion are Opacus's own, giving bit-identical results while
    a device that repeats the same phase every round pays for it once.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(np.array(_unit_rdp(q, sigma)) * steps for sigma, q, steps in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@lru_cache(maxsize=1024)
def _unit_rdp(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    curve = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    return tuple(float(x) for x in np.atleast_1d(curve))


def opacus_accountant(kind: str, history: History = ()) -> IAccountant:
    """A fresh Opacus accountant of ``kind`` carrying ``history``.

    Handy to hand the spent budget to an Opacus ``PrivacyEngine``
    (``engine.accountant = opacus_accountant(...)``).
    """
    from opacus.accountants import create_accountant

    _check_kind(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accountant = create_accountant(mechanism=kind)
    accountant.history = [tuple(entry) for entry in history]
    return accountant


# --------------------------------------------------------------------------- facade


class PrivacyAccountant:
    """Spent-budget record of one device (rating-level) or one run (user-level).

    Parameters
    ----------
    kind
        Opacus accountant: ``"rdp"``, ``"prv"`` or ``"gdp"``.
    delta
        The delta at which epsilon is reported.
    unit
        The protected record: ``"rating"`` or ``"user"``; carried into
        :meth:`report` so a logged epsilon is never read with the wrong unit.
    """

    def __init__(
        self, kind: str = "rdp", *, delta: float, unit: str = "rating"
    ) -> None:
        _check_kind(kind)
        _check_delta(delta)
        if unit not in PRIVACY_UNITS:
            raise PrivacyError(f"unit must be one of {PRIVACY_UNITS}, got {unit!r}")
        self._kind = kind
        self._delta = float(delta)
        self._unit = unit
        self._history: History = ()

    @property
    def kind(self) -> str:
        """The Opacus accountant name."""
        return self._kind

    @property
    def delta(self) -> float:
        """Delta at which epsilon is reported."""
        return self._delta

    @property
    def unit(self) -> str:
        """The protected record."""
        return self._unit

    @property
    def history(self) -> History:
        """Immutable ``(noise_multiplier, sample_rate, steps)`` phases."""
        return self._history

    @property
    def total_steps(self) -> int:
        """Number of mechanism invocations recorded."""
        return sum(n for _, _, n in self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` invocations of the subsampled Gaussian mechanism."""
        self._history = merge_step(
            self._history,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            kind=self._kind,
        )

    def epsilon(self) -> float:
        """Epsilon spent so far at :attr:`delta` (0 before any step)."""
        return epsilon_of(self._kind, self._history, self._delta)

    def epsilon_after(
        self, *, noise_multiplier: float, sample_rate: float, steps: int
    ) -> float:
        """Epsilon that would be spent after ``steps`` more invocations."""
        future = merge_step(
            self._history,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            kind=self._kind,
        )
        return epsilon_of(self._kind, future, self._delta)

    def would_exceed(
        self,
        *,
        epsilon_budget: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> bool:
        """True when ``steps`` more invocations would push epsilon above the budget.

        Meant to be asked *before* training, so a device that cannot afford a
        round does not touch its data at all.
        """
        _check_budget(epsilon_budget)
        future = merge_step(
            self._history,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            kind=self._kind,
        )
        if math.isinf(epsilon_budget):
            return False
        return epsilon_of(self._kind, future, self._delta) > epsilon_budget

    def state_dict(self) -> dict[str, Any]:
        """Plain, flat state: strings, floats and homogeneous lists only.

        Flat on purpose: a Flower ``ConfigRecord`` accepts scalars and lists of
        scalars but not nested lists, and a JSON device store takes it as is.
        """
        return {
            "accountant": self._kind,
            "delta": self._delta,
            "unit": self._unit,
            "noise_multipliers": [s for s, _, _ in self._history],
            "sample_rates": [q for _, q, _ in self._history],
            "steps": [n for _, _, n in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the history saved by :meth:`state_dict`.

        Raises
        ------
        PrivacyError
            When keys are missing, the lists disagree in length, or the state
            was written by a different accountant, delta or unit — accepting
            those would report an epsilon that does not describe the history.
        """
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise PrivacyError(f"accountant state lacks keys {missing}")
        for key, mine in (("accountant", self._kind), ("unit", self._unit)):
            if state[key] != mine:
                raise PrivacyError(
                    f"accountant state has {key}={state[key]!r}, this accountant has {mine!r}"
                )
        if not _is_real(state["delta"]) or float(state["delta"]) != self._delta:
            raise PrivacyError(
                f"accountant state has delta={state['delta']!r}, "
                f"this accountant has {self._delta!r}"
            )
        self._history = _history_from_lists(
            state["noise_multipliers"], state["sample_rates"], state["steps"], self._kind
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant, kind, delta and unit included, from its state."""
        for key in ("accountant", "delta", "unit"):
            if key not in state:
                raise PrivacyError(f"accountant state lacks key {key!r}")
        accountant = cls(str(state["accountant"]), delta=state["delta"], unit=str(state["unit"]))
        accountant.load_state_dict(state)
        return accountant

    def to_opacus(self) -> IAccountant:
        """An Opacus accountant with this history (for an Opacus ``PrivacyEngine``)."""
        return opacus_accountant(self._kind, self._history)

    def report(self) -> dict[str, Any]:
        """What a log line or a metrics record should say about the guarantee."""
        return {
            "epsilon": self.epsilon(),
            "delta": self._delta,
            "accountant": self._kind,
            "unit": self._unit,
        }

    def __repr__(self) -> str:
        return (
            f"PrivacyAccountant(kind={self._kind!r}, delta={self._delta!r}, "
            f"unit={self._unit!r}, steps={self.total_steps})"
        )


def _history_from_lists(
    sigmas: Sequence[Any], rates: Sequence[Any], steps: Sequence[Any], kind: str
) -> History:
    if not all(isinstance(x, (list, tuple)) for x in (sigmas, rates, steps)):
        raise PrivacyError("accountant state lists must be lists")
    if not len(sigmas) == len(rates) == len(steps):
        raise PrivacyError(
            "accountant state lists differ in length: "
            f"{len(sigmas)} noise_multipliers, {len(rates)} sample_rates, {len(steps)} steps"
        )
    history: History = ()
    for sigma, q, n in zip(sigmas, rates, steps, strict=True):
        history = merge_step(history, noise_multiplier=sigma, sample_rate=q, steps=n, kind=kind)
    return history


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
        value, bool
    )


def _check_kind(kind: str) -> None:
    if kind not in ACCOUNTANT_KINDS:
        raise PrivacyError(f"accountant must be one of {ACCOUNTANT_KINDS}, got {kind!r}")


def _check_delta(delta: float) -> None:
    if not _is_real(delta) or not 0.0 < float(delta) < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def _check_budget(epsilon_budget: float) -> None:
    if not _is_real(epsilon_budget) or math.isnan(epsilon_budget) or epsilon_budget <= 0:
        raise PrivacyError(f"epsilon budget must be > 0 (inf allowed), got {epsilon_budget!r}")
