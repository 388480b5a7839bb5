"""Fixed-point encoding: the documented error bound, unbiasedness and capacity checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrec.errors import SecAggConfigError, SecAggMessageError
from fedrec.secagg.quantize import QuantConfig, SegmentSpec, dequantize, quantize


def one_segment(length: int, clip: float = 1.0, scale: float | None = None, bits: int = 32):
    return QuantConfig(
        segments=(SegmentSpec.symmetric("x", length, clip=clip, scale=scale),), bits=bits
    )


def test_auto_scale_is_the_largest_power_of_two_that_fits() -> None:
    config = one_segment(4).resolve(100)
    scale = config.segments[0].scale
    assert scale is not None
    assert scale == 2.0 ** np.floor(np.log2(scale))
    assert 100 * 2 * scale < 2**32
    assert 100 * 2 * (2 * scale) >= 2**32
    wide = one_segment(4, bits=64).resolve(100)
    assert wide.segments[0].scale is not None
    assert 100 * wide.segments[0].max_level() <= 2**53


def test_capacity_check_refuses_wrapping_settings() -> None:
    config = one_segment(4, clip=1.0, scale=2.0**24)
    config.check_capacity(127)
    with pytest.raises(SecAggConfigError, match="could wrap"):
        config.check_capacity(128)
    with pytest.raises(SecAggConfigError, match="2\\^53"):
        one_segment(4, clip=1.0, scale=2.0**60, bits=64).check_capacity(2)
    with pytest.raises(SecAggConfigError):
        QuantConfig(segments=(SegmentSpec.symmetric("x", 4, clip=1.0),), bits=16)


def test_segment_spec_validation() -> None:
    with pytest.raises(SecAggConfigError):
        SegmentSpec("x", 4, lo=1.0, hi=1.0)
    with pytest.raises(SecAggConfigError):
        SegmentSpec("x", 0, lo=0.0, hi=1.0)
    with pytest.raises(SecAggConfigError):
        SegmentSpec("x", 4, lo=0.0, hi=float("inf"))
    with pytest.raises(SecAggConfigError):
        SegmentSpec("x", 4, lo=0.0, hi=1.0, scale=-1.0)
    with pytest.raises(SecAggConfigError):
        QuantConfig(segments=(SegmentSpec("x", 1, 0.0, 1.0), SegmentSpec("x", 1, 0.0, 1.0)))


def test_bad_inputs_are_rejected() -> None:
    config = one_segment(3).resolve(2)
    rng = np.random.default_rng(0)
    with pytest.raises(SecAggMessageError, match="non-finite"):
        quantize({"x": np.array([0.0, np.nan, 0.0])}, config, rng=rng)
    with pytest.raises(SecAggMessageError, match="non-finite"):
        quantize({"x": np.array([0.0, np.inf, 0.0])}, config, rng=rng)
    with pytest.raises(SecAggMessageError, match="shape"):
        quantize({"x": np.zeros(4)}, config, rng=rng)
    with pytest.raises(SecAggMessageError, match="not real"):
        quantize({"x": np.zeros(3, dtype=complex)}, config, rng=rng)
    with pytest.raises(SecAggMessageError, match="missing"):
        quantize({"y": np.zeros(3)}, config, rng=rng)


def test_stochastic_rounding_is_unbiased() -> None:
    config = one_segment(1, clip=1.0, scale=4.0).resolve(1)
    rng = np.random.default_rng(1)
    value = np.array([0.3])  # 0.3 * 4 + 4 = 5.2 steps: 5 w.p. 0.8, 6 w.p. 0.2
    draws = np.array([quantize({"x": value}, config, rng=rng)[0] for _ in range(20_000)])
    assert set(np.unique(draws)) == {5, 6}
    assert abs(draws.mean() - 5.2) < 0.02  # sd of the mean is 0.4/sqrt(20000) = 0.003


segment_values = hnp.arrays(
    np.float64,
    st.integers(min_value=1, max_value=40),
    elements=st.floats(-10, 10, allow_nan=False, width=64),
)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(segment_values, min_size=1, max_size=12),
    st.sampled_from([32, 64]),
    st.floats(min_value=0.01, max_value=5.0),
    st.integers(min_value=0, max_value=2**32),
)
def test_sum_of_quantized_vectors_is_within_the_bound(vectors, bits, clip, seed) -> None:
    length = min(v.shape[0] for v in vectors)
    vectors = [v[:length] for v in vectors]
    n = len(vectors)
    config = one_segment(length, clip=clip, bits=bits).resolve(n)
    rng = np.random.default_rng(seed)
    total = np.zeros(length, dtype=config.dtype)
    for v in vectors:
        total += quantize({"x": v}, config, rng=rng)
    estimate = dequantize(total, config, n_clients=n)["x"]
    exact = np.sum([np.clip(v, -clip, clip) for v in vectors], axis=0)
    scale = config.segments[0].scale
    assert scale is not None
    assert np.all(np.abs(estimate - exact) <= n / scale + 1e-12 * n * clip)


def test_asymmetric_segment_round_trip() -> None:
    config = QuantConfig(
        segments=(
            SegmentSpec("count", 5, lo=0.0, hi=8.0),
            SegmentSpec.symmetric("delta", 2, clip=0.5),
        )
    ).resolve(3)
    rng = np.random.default_rng(3)
    inputs = [
        {"count": np.array([0, 1, 2, 9, 8.0]), "delta": np.array([0.1, -0.7])} for _ in range(3)
    ]
    total = np.zeros(config.total_length, dtype=np.uint32)
    for x in inputs:
        total += quantize(x, config, rng=rng)
    sums = dequantize(total, config, n_clients=3)
    np.testing.assert_array_equal(sums["count"], [0, 3, 6, 24, 24])
    np.testing.assert_allclose(sums["delta"], [0.3, -1.5], atol=3 / config.segments[1].scale)
