"""Model parameters split into the two groups that decide what may leave a device.

``GLOBAL`` parameters (item factors, item biases, global mean) are shared: the
server holds them, every client downloads the same full table, and only updates
to them are uploaded (masked). ``LOCAL`` parameters (one user's factor and bias)
never leave the device. Keeping the split in the types makes it hard to send the
wrong thing: message builders accept :class:`GlobalParams` updates only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedrec.errors import ModelError


class ParamGroup(enum.Enum):
    """Where a parameter lives: on every device (GLOBAL) or on one device only (LOCAL)."""

    LOCAL = "local"
    GLOBAL = "global"


GLOBAL_ARRAYS = ("item_factors", "item_bias")
MISSING_WEIGHT = "missing_weight"
"""The optional public per-item array of ``"wrmf"`` with a popularity exponent."""
LOCAL_ARRAYS = ("user_factor", "user_bias")


@dataclass(frozen=True)
class GlobalParams:
    """The shared item table.

    Attributes
    ----------
    item_factors:
        ``(n_items, dim)`` float32 item embeddings ``Q``.
    item_bias:
        ``(n_items,)`` float32 item biases ``b``.
    global_mean:
        Mean rating ``mu`` (0 for implicit models).
    missing_weight:
        ``"wrmf"`` with ``model.pop-exponent`` only: ``(n_items,)`` weight of a
        non-interaction of each item (:func:`fedrec.model.mf.missing_weights`
        of the summed per-item counts), public like the table; ``None``
        weighs every non-interaction 1.
    """

    item_factors: np.ndarray
    item_bias: np.ndarray
    global_mean: float = 0.0
    missing_weight: np.ndarray | None = None

    group = ParamGroup.GLOBAL

    def __post_init__(self) -> None:
        q, b = self.item_factors, self.item_bias
        if q.ndim != 2 or b.ndim != 1 or q.shape[0] != b.shape[0]:
            raise ModelError(f"GlobalParams: item_factors {q.shape} and item_bias {b.shape} do not match")
        if not (np.isfinite(q).all() and np.isfinite(b).all() and np.isfinite(self.global_mean)):
            raise ModelError("GlobalParams: non-finite values")
        m = self.missing_weight
        if m is not None and (m.shape != b.shape or not (np.isfinite(m).all() and (m > 0).all())):
            raise ModelError(f"GlobalParams: missing_weight must be {b.shape} positive values, got {m.shape}")

    @classmethod
    def init(cls, n_items: int, dim: int, *, init_std: float = 0.1, global_mean: float = 0.0,
             seed: int = 0) -> GlobalParams:
        """Random small factors, zero biases (the usual MF start)."""
        rng = np.random.default_rng(seed)
        q = rng.normal(0.0, init_std, (n_items, dim)).astype(np.float32)
        return cls(q, np.zeros(n_items, np.float32), float(global_mean))

    @cached_property
    def gram(self) -> np.ndarray:
        """``Q^T diag(m) Q`` (float64, ``dim x dim``): the full-catalogue term of the ``"wrmf"`` user solve.

        ``m`` is :attr:`missing_weight` (1 when ``None``). A public function of
        the table every device downloads, so computing it reveals nothing;
        cached because every device of a round needs it.
        """
        q = self.item_factors.astype(np.float64)
        if self.missing_weight is None:
            return q.T @ q
        return (q * self.missing_weight.astype(np.float64)[:, None]).T @ q

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_factors.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays, in the order :data:`GLOBAL_ARRAYS` (for messages and checkpoints), then
        ``missing_weight`` when it is set."""
        out = {"item_factors": self.item_factors, "item_bias": self.item_bias}
        if self.missing_weight is not None:
            out[MISSING_WEIGHT] = self.missing_weight
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], global_mean: float) -> GlobalParams:
        try:
            missing = arrays.get(MISSING_WEIGHT)
            return cls(np.asarray(arrays["item_factors"], np.float32),
                       np.asarray(arrays["item_bias"], np.float32), float(global_mean),
                       None if missing is None else np.asarray(missing, np.float32))
        except KeyError as exc:
            raise ModelError(f"GlobalParams: missing array {exc.args[0]!r}") from None

    def replace(self, *, item_factors: np.ndarray | None = None, item_bias: np.ndarray | None = None,
                global_mean: float | None = None, missing_weight: np.ndarray | None = None) -> GlobalParams:
        """A copy with the given fields changed (``None`` keeps a field)."""
        return GlobalParams(
            self.item_factors if item_factors is None else item_factors,
            self.item_bias if item_bias is None else item_bias,
            self.global_mean if global_mean is None else global_mean,
            self.missing_weight if missing_weight is None else missing_weight,
        )


@dataclass(frozen=True)
class LocalParams:
    """One user's private state: factor ``p_u`` and bias ``b_u``. Never sent."""

    user_factor: np.ndarray
    user_bias: float = 0.0

    group = ParamGroup.LOCAL

    def __post_init__(self) -> None:
        if self.user_factor.ndim != 1:
            raise ModelError(f"LocalParams: user_factor must be 1-D, got {self.user_factor.shape}")

    @classmethod
    def zeros(cls, dim: int) -> LocalParams:
        return cls(np.zeros(dim, np.float32), 0.0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"user_factor": self.user_factor, "user_bias": np.array([self.user_bias], np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LocalParams:
        return cls(np.asarray(arrays["user_factor"], np.float32), float(np.asarray(arrays["user_bias"])[0]))


@dataclass(frozen=True)
class UserTable:
    """All users' LOCAL parameters, as a centralized trainer or evaluator holds them."""

    user_factors: np.ndarray
    user_bias: np.ndarray

    def __post_init__(self) -> None:
        if self.user_factors.ndim != 2 or self.user_bias.shape != (self.user_factors.shape[0],):
            raise ModelError(f"UserTable: shapes {self.user_factors.shape} / {self.user_bias.shape} do not match")

    @classmethod
    def zeros(cls, n_users: int, dim: int) -> UserTable:
        return cls(np.zeros((n_users, dim), np.float32), np.zeros(n_users, np.float32))

    def local(self, user: int) -> LocalParams:
        return LocalParams(self.user_factors[user].copy(), float(self.user_bias[user]))
