"""User-level helpers: joint clipping and Gaussian noise, central and distributed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrec.errors import PrivacyError
from fedrec.privacy.clipping import clip_update, global_l2_norm
from fedrec.privacy.noise import (
    add_noise,
    central_noise_std,
    distributed_noise_std,
    gaussian_noise,
)

_finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)
_arrays = st.lists(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
               elements=_finite32),
    min_size=1, max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(arrays=_arrays, clip=st.floats(1e-3, 1e4))
def test_clipping_never_increases_norm_and_respects_bound(arrays: list, clip: float) -> None:
    clipped, norm = clip_update(arrays, clip=clip)
    after = global_l2_norm(clipped)
    assert norm == pytest.approx(global_l2_norm(arrays))
    assert after <= norm * (1 + 1e-6) + 1e-30
    assert after <= clip * (1 + 1e-6)
    assert [a.shape for a in clipped] == [a.shape for a in arrays]
    assert [a.dtype for a in clipped] == [a.dtype for a in arrays]


def test_clipping_is_joint_not_per_array() -> None:
    a, b = np.full(4, 3.0, np.float32), np.full(4, 4.0, np.float32)  # norms 6 and 8 -> 10
    (ca, cb), norm = clip_update([a, b], clip=5.0)
    assert norm == pytest.approx(10.0)
    np.testing.assert_allclose(ca, a / 2)
    np.testing.assert_allclose(cb, b / 2)
    assert global_l2_norm([ca, cb]) == pytest.approx(5.0, rel=1e-6)


def test_clipping_below_bound_is_identity_and_copies() -> None:
    a = np.ones(3, np.float32)
    (c,), norm = clip_update([a], clip=10.0)
    np.testing.assert_array_equal(c, a)
    c[0] = 7
    assert a[0] == 1.0
    assert norm == pytest.approx(math.sqrt(3))


@pytest.mark.parametrize("clip", [0.0, -1.0, math.inf, math.nan])
def test_clip_bound_must_be_positive_finite(clip: float) -> None:
    with pytest.raises(PrivacyError, match="clip"):
        clip_update([np.ones(2)], clip=clip)


def test_non_finite_update_cannot_be_clipped() -> None:
    with pytest.raises(PrivacyError, match="not finite"):
        clip_update([np.array([1.0, np.nan])], clip=1.0)


def test_noise_stds() -> None:
    assert central_noise_std(noise_multiplier=1.5, clip=2.0) == 3.0
    assert distributed_noise_std(noise_multiplier=1.5, clip=2.0, min_survivors=9) == 1.0
    with pytest.raises(PrivacyError):
        distributed_noise_std(noise_multiplier=1.0, clip=1.0, min_survivors=0)
    with pytest.raises(PrivacyError):
        central_noise_std(noise_multiplier=-1.0, clip=1.0)
    with pytest.raises(PrivacyError):
        central_noise_std(noise_multiplier=1.0, clip=0.0)


@pytest.mark.parametrize("secure", [False, True])
def test_central_noise_has_std_sigma_times_clip(secure: bool) -> None:
    std = central_noise_std(noise_multiplier=1.3, clip=0.7)
    x = gaussian_noise((200_000,), std=std, rng=np.random.default_rng(1), secure=secure)
    assert x.dtype == np.float32
    # standard error of the sample std is std / sqrt(2n) ~ 0.16 %; 2 % is > 10 SE
    assert float(x.std()) == pytest.approx(std, rel=0.02)
    assert abs(float(x.mean())) < 0.02 * std


def test_distributed_shares_sum_to_central_noise_at_threshold() -> None:
    sigma, clip, t_min, n = 1.1, 2.0, 8, 100_000
    share = distributed_noise_std(noise_multiplier=sigma, clip=clip, min_survivors=t_min)
    rng = np.random.default_rng(2)
    total = sum(gaussian_noise((n,), std=share, rng=rng, dtype=np.float64) for _ in range(t_min))
    assert float(np.std(total)) == pytest.approx(sigma * clip, rel=0.02)


def test_zero_std_is_exact_zeros() -> None:
    x = gaussian_noise((3, 2), std=0.0, rng=np.random.default_rng(0))
    assert not x.any()


def test_add_noise_keeps_shapes_and_dtypes() -> None:
    arrays: list[np.ndarray] = [np.zeros((3, 2), np.float32), np.zeros(5, np.float64)]
    out = add_noise(arrays, std=1.0, rng=np.random.default_rng(0))
    assert [(a.shape, a.dtype) for a in out] == [((3, 2), np.float32), ((5,), np.float64)]
    assert all(a.any() for a in out)
    assert not arrays[0].any()


def test_add_noise_refuses_integer_arrays() -> None:
    with pytest.raises(PrivacyError, match="floating"):
        add_noise([np.zeros(3, np.int64)], std=1.0, rng=np.random.default_rng(0))
