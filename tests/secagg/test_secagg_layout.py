"""The update layout with extra segments: a secure sum of anything a round wants summed."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import SecAggConfigError, SecAggError, SecAggMessageError
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.secagg import (
    SegmentSpec,
    aggregate_in_process,
    build_cohort,
    flatten_update,
    quant_config_for,
    unflatten_sums,
    wrmf_segments,
)
from fedrec.train.local import LocalConfig, local_update
from fedrec.wire import ARRAY_ITEM_CURVATURE, ARRAY_USER_GRAM, WRMF_SEGMENTS


def update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"item_factors": rng.uniform(-0.1, 0.1, (5, 2)), "item_bias": rng.uniform(-0.1, 0.1, 5),
            "counts": rng.integers(0, 2, 5).astype(float)}


def test_an_extra_segment_is_summed_securely_with_the_update() -> None:
    extra = (SegmentSpec("eval.sq_err", 2, lo=0.0, hi=16.0),)
    ids = list(range(1, 9))
    quant = quant_config_for(n_items=5, dim=2, clip=1.0, bits=32, max_count=1, cohort=len(ids), extra=extra)
    assert [s.name for s in quant.segments][-1] == "eval.sq_err"
    server, clients = build_cohort(round_id=1, participants=ids, threshold=5, neighbours="all", quant=quant)
    rng = np.random.default_rng(0)
    evals = {i: np.array([float(i), 0.5]) for i in ids}
    inputs = {i: flatten_update(update(rng), extra={"eval.sq_err": evals[i]}) for i in ids}
    result = aggregate_in_process(server, clients, inputs)
    sums = unflatten_sums(result.sums, n_items=5, dim=2)
    assert sums["item_factors"].shape == (5, 2)
    assert np.abs(sums["eval.sq_err"] - sum(evals.values())).max() <= len(ids) / quant.segments[-1].scale


def test_extra_segments_cannot_shadow_the_update() -> None:
    with pytest.raises(SecAggConfigError, match="reuse names"):
        quant_config_for(n_items=5, dim=2, clip=1.0, bits=32, max_count=1, cohort=4,
                         extra=(SegmentSpec("counts", 5, lo=0.0, hi=1.0),))
    with pytest.raises(SecAggMessageError, match="reuses an update name"):
        flatten_update(update(np.random.default_rng(1)), extra={"item_bias": np.zeros(5)})


def test_wrmf_updates_are_summed_securely_segment_by_segment() -> None:
    """Real ``"wrmf"`` device updates through the five-segment layout: each sum is the plain sum of the clipped
    segments within the quantization bound, and a device without room for its segments refuses."""
    n_items, dim, clip = 12, 3, 2.0
    model = MFConfig(kind="implicit", dim=dim, loss="wrmf", reg=0.5, confidence=4.0, recency_boost=0.0)
    glob = GlobalParams.init(n_items, dim, init_std=0.5, seed=2)
    rng = np.random.default_rng(4)
    ids = list(range(1, 9))
    updates = {}
    for i in ids:
        items = rng.choice(n_items, 4, replace=False)
        updates[i], _ = local_update(glob, LocalParams.zeros(dim), items, np.ones(4), model=model,
                                     config=LocalConfig(), rng=rng)
    extra = wrmf_segments(n_items=n_items, dim=dim, clip=clip)
    assert [(s.name, s.length, s.lo, s.hi) for s in extra] == [
        (ARRAY_USER_GRAM, dim * dim, -clip, clip), (ARRAY_ITEM_CURVATURE, n_items, -clip, clip)]
    quant = quant_config_for(n_items=n_items, dim=dim, clip=clip, bits=32, max_count=1, cohort=len(ids), extra=extra)
    assert quant.total_length == n_items * (dim + 3) + dim * dim
    server, clients = build_cohort(round_id=1, participants=ids, threshold=5, neighbours="all", quant=quant)
    inputs = {i: flatten_update(u.fixed_segments(), extra=u.extra) for i, u in updates.items()}
    sums = unflatten_sums(aggregate_in_process(server, clients, inputs).sums, n_items=n_items, dim=dim)
    scale = {s.name: s.scale for s in quant.segments}
    assert any(np.abs(u.extra[ARRAY_ITEM_CURVATURE]).max() > clip for u in updates.values())  # the clip bites
    for name in ("item_factors", *WRMF_SEGMENTS):
        want = sum(np.clip(np.asarray(u.segments()[name], np.float64), -clip, clip) for u in updates.values())
        assert np.abs(sums[name].reshape(want.shape) - want).max() <= len(ids) / scale[name]
    fixed_only = quant_config_for(n_items=n_items, dim=dim, clip=clip, bits=32, max_count=1, cohort=len(ids))
    server, clients = build_cohort(round_id=2, participants=ids, threshold=5, neighbours="all", quant=fixed_only)
    with pytest.raises(SecAggError, match="0 clients sent masked input"):  # every device refused its mask stage
        aggregate_in_process(server, clients, inputs)
