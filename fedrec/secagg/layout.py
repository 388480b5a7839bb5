"""fedrec's update as a masked vector: segments, their bounds, and the downlink digest.

The secure sum adds 1-D float *segments* (:class:`~fedrec.secagg.quantize.SegmentSpec`):
each has a name, a length and a range it is clipped to. A training round sums
three fixed segments in wire order (:data:`~fedrec.wire.UPDATE_SEGMENTS`):
``item_factors`` (``n_items * dim``, in ``[-clip, clip]``), ``item_bias``
(``n_items``, same clip) and ``counts`` (``n_items``, in ``[0, max_count]``,
summed exactly). Anything else a round should sum securely (evaluation sums
and counts, say) is an *extra* segment appended after them:

    quant = quant_config_for(..., extra=(SegmentSpec("eval.sq_err", 1, lo=0.0, hi=16.0),))
    # device: segments() returns flatten_update(update, extra={"eval.sq_err": np.array([e])})
    # server: unflatten_sums(result.sums, ...)["eval.sq_err"] is the cohort's sum

Extra segments ride in the same masked vector, so they cost no message and
carry the same guarantee as the update. :func:`model_digest` hashes the round's
downlink (table and round configuration) in a canonical form; both sides bind
it into the pairwise masks (:func:`fedrec.secagg.crypto.keys.mask_seed`), so
devices that were sent different tables produce masks that do not cancel.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from fedrec.errors import SecAggConfigError, SecAggMessageError
from fedrec.secagg.quantize import QuantConfig, SegmentSpec
from fedrec.wire import ARRAY_COUNTS, ARRAY_ITEM_BIAS, ARRAY_ITEM_FACTORS, UPDATE_SEGMENTS, wrmf_segment_lengths

__all__ = [
    "DIGEST_BYTES",
    "NO_MODEL",
    "flatten_update",
    "model_digest",
    "quant_config_for",
    "unflatten_sums",
    "wrmf_segments",
]

DIGEST_BYTES = 32
NO_MODEL = bytes(DIGEST_BYTES)
"""The digest bound into masks of a round that sends no downlink (in-process sums, tests)."""

_DIGEST_TAG = b"fedrec-secagg downlink v1\x00"


def quant_config_for(
    *,
    n_items: int,
    dim: int,
    clip: float,
    bits: int,
    max_count: float,
    cohort: int,
    extra: Sequence[SegmentSpec] = (),
) -> QuantConfig:
    """The masked-vector layout of a fedrec update (plus ``extra`` segments), scales resolved for ``cohort``.

    Scales are the largest powers of two the ring allows for ``cohort``
    clients; the counts' scale must be at least 1 so integer counts are summed
    exactly. Use the result for any round of at most ``cohort`` participants.

    Raises
    ------
    SecAggConfigError
        A size or bound is invalid, an extra segment reuses an update name, or
        ``bits`` cannot hold ``cohort`` clients' sum of counts exactly.
    """
    for name, value in (("n_items", n_items), ("dim", dim), ("cohort", cohort)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SecAggConfigError(f"{name} must be a positive int, got {value!r}")
    for name, bound in (("clip", clip), ("max_count", max_count)):
        if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
            raise SecAggConfigError(f"{name} must be a positive finite number, got {bound!r}")
    clash = sorted({s.name for s in extra} & set(UPDATE_SEGMENTS))
    if clash:
        raise SecAggConfigError(f"extra segments {clash} reuse names of the update's segments")
    quant = QuantConfig(
        segments=(
            SegmentSpec.symmetric(ARRAY_ITEM_FACTORS, n_items * dim, clip=clip),
            SegmentSpec.symmetric(ARRAY_ITEM_BIAS, n_items, clip=clip),
            SegmentSpec(ARRAY_COUNTS, n_items, lo=0.0, hi=float(max_count)),
            *extra,
        ),
        bits=bits,
    ).resolve(cohort)
    counts = quant.segments[2]
    assert counts.scale is not None
    if counts.scale < 1:
        raise SecAggConfigError(
            f"bits={bits} cannot hold the exact sum of counts of {cohort} clients up to {max_count} "
            f"each ({cohort * max_count:.0f} >= the ring's capacity); use bits=64 or a smaller cohort"
        )
    return quant


def wrmf_segments(*, n_items: int, dim: int, clip: float) -> tuple[SegmentSpec, SegmentSpec]:
    """The two extra segments of a ``model.loss = "wrmf"`` update, after the three fixed ones.

    ``user_gram`` (``dim * dim``, the device's ``p p^T`` flattened) and
    ``item_curvature`` (``n_items``, ``(c - m_i)|p|^2`` on its positives), both
    in ``[-clip, clip]`` (the curvature is negative only where a popularity
    weight ``m_i`` exceeds the confidence). The server's step
    (:func:`fedrec.train.aggregate.wrmf_direction`) needs both sums: without
    them a secure ``wrmf`` round could not move the table.
    """
    gram, curvature = (SegmentSpec.symmetric(name, length, clip=clip)
                       for name, length in wrmf_segment_lengths(n_items, dim).items())
    return gram, curvature


def flatten_update(
    update: Mapping[str, np.ndarray], *, extra: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """``item_factors (n_items, dim)``, ``item_bias (n_items,)``, ``counts (n_items,)`` (+ ``extra``) -> 1-D segments.

    Raises
    ------
    SecAggMessageError
        A key is missing or unknown, or the shapes do not fit together.
    """
    missing = [k for k in UPDATE_SEGMENTS if k not in update]
    unknown = [k for k in update if k not in UPDATE_SEGMENTS]
    if missing or unknown:
        raise SecAggMessageError(f"update: missing {missing}, unknown {unknown}")
    factors = np.asarray(update[ARRAY_ITEM_FACTORS])
    bias = np.asarray(update[ARRAY_ITEM_BIAS])
    counts = np.asarray(update[ARRAY_COUNTS])
    if factors.ndim != 2:
        raise SecAggMessageError(f"update: item_factors must be (n_items, dim), got shape {factors.shape}")
    n_items = factors.shape[0]
    for name, arr in ((ARRAY_ITEM_BIAS, bias), (ARRAY_COUNTS, counts)):
        if arr.shape != (n_items,):
            raise SecAggMessageError(f"update: {name} must have shape ({n_items},), got {arr.shape}")
    out = {ARRAY_ITEM_FACTORS: factors.reshape(-1), ARRAY_ITEM_BIAS: bias, ARRAY_COUNTS: counts}
    for name, arr in (extra or {}).items():
        if name in out:
            raise SecAggMessageError(f"update: extra segment {name!r} reuses an update name")
        out[name] = np.asarray(arr, dtype=np.float64).reshape(-1)
    return out


def unflatten_sums(sums: Mapping[str, np.ndarray], *, n_items: int, dim: int) -> dict[str, np.ndarray]:
    """Segment sums -> ``(n_items, dim)``, ``(n_items,)``, ``(n_items,)``; extra segments pass through 1-D.

    Raises
    ------
    SecAggMessageError
        An update segment is missing or has the wrong length.
    """
    missing = [k for k in UPDATE_SEGMENTS if k not in sums]
    if missing:
        raise SecAggMessageError(f"sums: missing segments {missing}")
    expected = {ARRAY_ITEM_FACTORS: n_items * dim, ARRAY_ITEM_BIAS: n_items, ARRAY_COUNTS: n_items}
    out = {name: np.asarray(arr) for name, arr in sums.items()}
    for name, length in expected.items():
        if out[name].shape != (length,):
            raise SecAggMessageError(f"sums: {name} has shape {out[name].shape}, expected ({length},)")
    out[ARRAY_ITEM_FACTORS] = out[ARRAY_ITEM_FACTORS].reshape(n_items, dim)
    return out


def model_digest(arrays: Mapping[str, np.ndarray], config: Mapping[str, object]) -> bytes:
    """SHA-256 of a round's downlink in a canonical form, the same on the server and on a device.

    Layout (pinned by a known-answer test): the tag ``fedrec-secagg downlink
    v1\\0``; the configuration as UTF-8 JSON with sorted keys and no spaces,
    prefixed by its 8-byte big-endian length; then per array in name order:
    the name, the dtype string (``<f8``), the shape as JSON (each prefixed by
    its 8-byte length) and the array's C-order bytes (prefixed likewise).

    Raises
    ------
    SecAggMessageError
        A configuration value JSON cannot hold.
    """
    h = hashlib.sha256(_DIGEST_TAG)
    try:
        cfg = json.dumps({str(k): v for k, v in config.items()}, sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise SecAggMessageError(f"downlink configuration cannot be digested: {exc}") from None
    _feed(h, cfg.encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        _feed(h, name.encode())
        _feed(h, arr.dtype.str.encode())
        _feed(h, json.dumps(list(arr.shape)).encode())
        _feed(h, arr.tobytes())
    return h.digest()


def _feed(h: hashlib._Hash, data: bytes) -> None:
    h.update(struct.pack(">Q", len(data)))
    h.update(data)
