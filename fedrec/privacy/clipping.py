"""User-level clipping: bound a whole model update by one L2 norm.

User-level DP protects everything one user contributes in a round, so the
sensitivity is that of the *whole* update — item factors, biases, every array
together. Clipping arrays separately would let the joint norm reach
``clip * sqrt(n_arrays)`` and under-state the sensitivity the noise is
calibrated to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedrec.errors import PrivacyError


def global_l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of the concatenation of ``arrays``, accumulated in float64."""
    total = 0.0
    for a in arrays:
        flat = np.asarray(a, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(
    arrays: Sequence[np.ndarray], *, clip: float
) -> tuple[list[np.ndarray], float]:
    """Scale ``arrays`` jointly so their global L2 norm is at most ``clip``.

    Parameters
    ----------
    arrays
        The parts of one update; shapes and dtypes are kept.
    clip
        The L2 bound (the sensitivity the noise is calibrated to).

    Returns
    -------
    clipped, norm
        New arrays (inputs are not modified) and the norm *before* clipping,
        which is private and must not leave the device in the clear.

    Raises
    ------
    PrivacyError
        When ``clip`` is not finite and positive or the update is not finite
        (a NaN update cannot be bounded).
    """
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise PrivacyError(f"clip must be a number, got {clip!r}")
    if not math.isfinite(clip) or clip <= 0:
        raise PrivacyError(f"clip must be finite and > 0, got {clip!r}")
    norm = global_l2_norm(arrays)
    if not math.isfinite(norm):
        raise PrivacyError("update is not finite; cannot clip it")
    if norm <= clip:
        return [np.array(a, copy=True) for a in arrays], norm
    scale = clip / norm
    clipped = [_scaled(np.asarray(a), scale) for a in arrays]
    return clipped, norm


def _scaled(a: np.ndarray, scale: float) -> np.ndarray:
    """Scale in float64 and cast back once, so the only overshoot of the bound is
    the final rounding to the array's dtype (relative ``2**-24`` for float32)."""
    out = a.astype(np.float64) * scale
    return out.astype(a.dtype, copy=False) if np.issubdtype(a.dtype, np.floating) else out
