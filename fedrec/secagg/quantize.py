"""Fixed-point encoding of float segments into the ring Z_{2^b}.

Masks live in Z_{2^b} (``b`` = 32 or 64), where numpy ``uint32``/``uint64``
wrap-around addition is exactly addition mod 2^b. Floats get there by:

1. clipping each element of a segment to its bounds ``[lo, hi]``
   (``[-c, c]`` for a symmetric segment);
2. shifting by ``-lo`` and multiplying by the segment's ``scale``, giving a
   real ``v`` in ``[0, L]`` with ``L = (hi - lo) * scale``;
3. stochastic rounding: ``q = floor(v) + Bernoulli(v - floor(v))``, so
   ``q`` is an integer in ``[0, ceil(L)]`` and ``E[q] = v`` (unbiased).

The server's sum of ``n`` such vectors is at most ``n * ceil(L)``. The
settings are refused unless ``n * ceil(L) < 2^b`` (the sum cannot wrap) and
``n * ceil(L) <= 2^53`` (float64 holds the sum exactly), so the unmasked ring
sum is the true integer sum. Dequantizing subtracts the offsets and divides by
the scale: ``sum_hat = Q / scale + n * lo``.

Quantization error bound
------------------------
For every element, with ``n`` contributing clients and ``scale`` the
segment's scale (quantization steps per unit)::

    |sum_hat - sum_i clip(x_i)| <= n / scale            (worst case)
    E[sum_hat] = sum_i clip(x_i)                        (unbiased)
    Var[sum_hat] <= n / (4 * scale^2)                   (independent rounding)

because each client's rounding error ``(q - v) / scale`` lies in
``(-1/scale, 1/scale)``, has mean zero and variance at most ``1/(4 scale^2)``.
Only clipping changes values beyond that: inputs outside ``[lo, hi]`` are
summed as ``lo`` or ``hi``. Float64 rounding adds a relative error near
``2^-52``, negligible next to ``1/scale``.

When a segment's scale is left unset it is chosen, once the cohort size is
known, as the largest power of two that satisfies both capacity rules; a
power of two makes the division by the scale exact in floating point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedrec.errors import SecAggConfigError, SecAggMessageError

__all__ = ["QuantConfig", "SegmentSpec", "dequantize", "quantize"]

_FLOAT_EXACT = 1 << 53


@dataclass(frozen=True)
class SegmentSpec:
    """One named slice of the masked vector and how it is encoded.

    Attributes
    ----------
    name:
        Key of the segment in the client's input and the server's result.
    length:
        Number of float elements.
    lo, hi:
        Clip bounds; ``lo < hi``. Symmetric ``[-c, c]`` via :meth:`symmetric`.
    scale:
        Quantization steps per unit, or ``None`` to pick the largest power of
        two the ring allows for the cohort (see :meth:`QuantConfig.resolve`).
    """

    name: str
    length: int
    lo: float
    hi: float
    scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SecAggConfigError("segment name must be a non-empty string")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise SecAggConfigError(f"segment {self.name!r}: length must be a positive int")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise SecAggConfigError(
                f"segment {self.name!r}: clip bounds must be finite with lo < hi, "
                f"got [{self.lo}, {self.hi}]"
            )
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise SecAggConfigError(f"segment {self.name!r}: scale must be positive and finite")

    @classmethod
    def symmetric(
        cls, name: str, length: int, *, clip: float, scale: float | None = None
    ) -> SegmentSpec:
        """Segment clipped to ``[-clip, clip]``."""
        return cls(name=name, length=length, lo=-float(clip), hi=float(clip), scale=scale)

    def max_level(self) -> int:
        """Largest quantized value ``ceil((hi - lo) * scale)`` one client can send."""
        if self.scale is None:
            raise SecAggConfigError(f"segment {self.name!r}: scale not resolved")
        return math.ceil((self.hi - self.lo) * self.scale)


@dataclass(frozen=True)
class QuantConfig:
    """Layout of the masked vector and the ring it lives in.

    Attributes
    ----------
    segments:
        Segments in vector order; names unique.
    bits:
        Ring width ``b`` (32 or 64); the masked vector has dtype ``uint<b>``.
    """

    segments: tuple[SegmentSpec, ...]
    bits: int = 32

    def __post_init__(self) -> None:
        if self.bits not in (32, 64):
            raise SecAggConfigError(f"bits must be 32 or 64, got {self.bits}")
        if not self.segments:
            raise SecAggConfigError("at least one segment is required")
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise SecAggConfigError(f"segment names must be unique, got {names}")

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """Numpy dtype of the ring: ``uint32`` or ``uint64``."""
        return np.dtype(np.uint32 if self.bits == 32 else np.uint64)

    @property
    def total_length(self) -> int:
        """Length of the concatenated masked vector."""
        return sum(s.length for s in self.segments)

    def bounds(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, stop)`` slice of each segment in the vector."""
        out, start = {}, 0
        for s in self.segments:
            out[s.name] = (start, start + s.length)
            start += s.length
        return out

    def resolve(self, n_clients: int) -> QuantConfig:
        """Fill unset scales for a cohort of ``n_clients`` and check capacity."""
        segments = tuple(
            s if s.scale is not None else replace(s, scale=self._auto_scale(s, n_clients))
            for s in self.segments
        )
        resolved = replace(self, segments=segments)
        resolved.check_capacity(n_clients)
        return resolved

    def check_capacity(self, n_clients: int) -> None:
        """Refuse settings under which the sum of ``n_clients`` vectors could wrap.

        Raises
        ------
        SecAggConfigError
            ``n * ceil((hi - lo) * scale) >= 2^bits`` or exceeds ``2^53``.
        """
        if n_clients < 1:
            raise SecAggConfigError("cohort size must be at least 1")
        for s in self.segments:
            total = n_clients * s.max_level()
            if total >= 1 << self.bits:
                raise SecAggConfigError(
                    f"segment {s.name!r}: {n_clients} clients x {s.max_level()} levels = {total} "
                    f">= 2^{self.bits}; the sum could wrap (lower the scale or use bits=64)"
                )
            if total > _FLOAT_EXACT:
                raise SecAggConfigError(
                    f"segment {s.name!r}: {n_clients} clients x {s.max_level()} levels = {total} "
                    f"> 2^53; float64 cannot hold the sum exactly (lower the scale)"
                )

    def _auto_scale(self, segment: SegmentSpec, n_clients: int) -> float:
        cap = min((1 << self.bits) - 1, _FLOAT_EXACT)
        per_client = cap // max(n_clients, 1)
        span = segment.hi - segment.lo
        if per_client < 1 or per_client / span < 2.0**-1000:
            raise SecAggConfigError(
                f"segment {segment.name!r}: no scale fits {n_clients} clients in {self.bits} bits"
            )
        exponent = math.floor(math.log2(per_client / span))
        while math.ceil(span * 2.0**exponent) > per_client:
            exponent -= 1
        return 2.0**exponent


def quantize(
    segments: Mapping[str, np.ndarray], config: QuantConfig, *, rng: np.random.Generator
) -> np.ndarray:
    """Encode named float segments as one ring vector (clip, scale, round, shift).

    Raises
    ------
    SecAggMessageError
        A segment is missing or unknown, has the wrong shape, a non-real
        dtype, or a NaN/inf value.
    """
    _check_segment_names(segments, config)
    out = np.empty(config.total_length, dtype=config.dtype)
    for spec, (start, stop) in zip(config.segments, config.bounds().values(), strict=True):
        values = _check_values(spec, segments[spec.name])
        out[start:stop] = _quantize_segment(values, spec, rng)
    return out


def _quantize_segment(
    values: np.ndarray, spec: SegmentSpec, rng: np.random.Generator
) -> np.ndarray:
    assert spec.scale is not None
    v = np.clip(values, spec.lo, spec.hi)  # in place from here on: vectors are long, temporaries cost
    v -= spec.lo
    v *= spec.scale
    q: np.ndarray = np.floor(v)
    v -= q  # the fractional part: round up with that probability
    q += rng.random(v.shape) < v
    np.clip(q, 0, spec.max_level(), out=q)
    return q


def dequantize(total: np.ndarray, config: QuantConfig, *, n_clients: int) -> dict[str, np.ndarray]:
    """Turn the unmasked ring sum of ``n_clients`` vectors into float64 segment sums."""
    out = {}
    for spec, (start, stop) in zip(config.segments, config.bounds().values(), strict=True):
        assert spec.scale is not None
        ints = total[start:stop].astype(np.float64)
        out[spec.name] = ints / spec.scale + n_clients * spec.lo
    return out


def _check_segment_names(segments: Mapping[str, np.ndarray], config: QuantConfig) -> None:
    expected = [s.name for s in config.segments]
    missing = [n for n in expected if n not in segments]
    unknown = [n for n in segments if n not in expected]
    if missing or unknown:
        raise SecAggMessageError(f"segments: missing {missing}, unknown {unknown}")


def _check_values(spec: SegmentSpec, values: object) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise SecAggMessageError(f"segment {spec.name!r}: expected a numpy array")
    if values.shape != (spec.length,):
        raise SecAggMessageError(
            f"segment {spec.name!r}: shape {values.shape}, expected ({spec.length},)"
        )
    if values.dtype.kind not in "fiub":
        raise SecAggMessageError(f"segment {spec.name!r}: dtype {values.dtype} is not real")
    as_float = values.astype(np.float64, copy=False)
    finite = np.isfinite(as_float)
    if not finite.all():
        index = int(np.argmin(finite))
        raise SecAggMessageError(f"segment {spec.name!r}: non-finite value at index {index}")
    return as_float
