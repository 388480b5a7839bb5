"""The update layout with extra segments: a secure sum of anything a round wants summed."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import SecAggConfigError, SecAggMessageError
from fedrec.secagg import (
    SegmentSpec,
    aggregate_in_process,
    build_cohort,
    flatten_update,
    quant_config_for,
    unflatten_sums,
)


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
