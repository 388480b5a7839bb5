"""Evaluation metrics as a secure-aggregation layout: the server learns cohort totals only.

Under secure aggregation a device's evaluation sums and counts (its squared
error, its test-set size, whether its held-out item ranked in the top 10) are
as private as its update. They travel through the same secure sum as
training, as a vector of one-element segments, one per ``<metric>.sum`` and
``<metric>.count`` (:func:`eval_layout`); the server unmasks only the totals
over at least the evaluation threshold of devices and turns them into the
cohort's metrics (:func:`eval_totals`).

The segment bounds are public: rating errors are bounded by the rating
scale, ranking hits by one per user, and a device's test rows are capped at
:data:`EVAL_MAX_ROWS` (a device holding more scales its sums and counts down
by the same factor, which keeps its error ratios and bounds its weight).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrec.errors import ConfigError
from fedrec.metrics.core import MetricSums
from fedrec.secagg.quantize import QuantConfig, SegmentSpec

#: Test rows one device may contribute (its sums and counts are scaled down beyond it).
EVAL_MAX_ROWS = 1024
RATING_METRICS = ("rmse", "mae")
RANKING_METRICS = ("hr@10", "recall@10", "ndcg@10")
_SUM, _COUNT = ".sum", ".count"


def eval_metrics(kind: str) -> tuple[str, ...]:
    """The metrics a model kind reports (``explicit``: RMSE, MAE; ``implicit``: HR, recall, NDCG at 10)."""
    if kind == "explicit":
        return RATING_METRICS
    if kind == "implicit":
        return RANKING_METRICS
    raise ConfigError(f"model kind {kind!r} has no evaluation layout")


def eval_bounds(*, kind: str, rating_scale: tuple[float, float] | None,
                users_per_client: int) -> dict[str, float]:
    """Largest value one device may put in each segment (the clip bound ``hi``; ``lo`` is 0)."""
    if kind == "explicit":
        span = 4.0 if rating_scale is None else float(rating_scale[1] - rating_scale[0])
        span = max(span, 1.0)
        return {"rmse.sum": span * span * EVAL_MAX_ROWS, "rmse.count": float(EVAL_MAX_ROWS),
                "mae.sum": span * EVAL_MAX_ROWS, "mae.count": float(EVAL_MAX_ROWS)}
    users = float(max(users_per_client, 1))
    return {f"{m}{suffix}": users for m in eval_metrics(kind) for suffix in (_SUM, _COUNT)}


def eval_layout(*, kind: str, rating_scale: tuple[float, float] | None, users_per_client: int, bits: int,
                cohort: int) -> QuantConfig:
    """The masked-vector layout of an evaluation round for ``cohort`` devices, scales resolved."""
    bounds = eval_bounds(kind=kind, rating_scale=rating_scale, users_per_client=users_per_client)
    segments = tuple(SegmentSpec(name, 1, lo=0.0, hi=hi) for name, hi in bounds.items())
    return QuantConfig(segments=segments, bits=bits).resolve(cohort)


def eval_segments(sums: MetricSums, *, kind: str, rating_scale: tuple[float, float] | None,
                  users_per_client: int) -> dict[str, np.ndarray]:
    """A device's metric sums as the layout's segments (zeros for a metric it has no rows for)."""
    flat = sums.flat()
    names = eval_bounds(kind=kind, rating_scale=rating_scale, users_per_client=users_per_client)
    factor = 1.0
    if kind == "explicit":
        rows = max((flat.get(f"{m}{_COUNT}", 0.0) for m in RATING_METRICS), default=0.0)
        factor = min(1.0, EVAL_MAX_ROWS / rows) if rows > 0 else 1.0
    return {name: np.array([factor * float(flat.get(name, 0.0))], np.float64) for name in names}


def eval_totals(segment_sums: Mapping[str, np.ndarray]) -> MetricSums:
    """The cohort's :class:`MetricSums` from the unmasked segment totals."""
    total = MetricSums()
    for name, value in segment_sums.items():
        if name.endswith(_SUM):
            metric = name[: -len(_SUM)]
            count = float(np.asarray(segment_sums[f"{metric}{_COUNT}"]).sum())
            total.add(metric, float(np.asarray(value).sum()), count)
    return total
