"""Known answers and properties of the prime field and Shamir sharing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.errors import SecAggConfigError, SecAggError, SecAggMessageError
from fedrec.secagg.crypto.shamir import (
    ELEMENT_BYTES,
    PRIME,
    element_from_bytes,
    element_to_bytes,
    inverse,
    lagrange_at_zero,
    lagrange_without,
    reconstruct,
    reconstruct_with,
    split,
)


def seeded(seed: int):
    return np.random.default_rng(seed).bytes


def test_prime_is_the_mersenne_521() -> None:
    assert PRIME == 2**521 - 1
    assert PRIME > 2**256
    assert ELEMENT_BYTES * 8 >= 521


def test_inverse_known_answers() -> None:
    assert inverse(1) == 1
    assert inverse(2) == (PRIME + 1) // 2
    assert inverse(PRIME - 1) == PRIME - 1
    for value in (3, 7, 12345, 2**64 + 13, PRIME - 2):
        assert value * inverse(value) % PRIME == 1


def test_inverse_of_zero_is_refused() -> None:
    with pytest.raises(SecAggConfigError):
        inverse(0)
    with pytest.raises(SecAggConfigError):
        inverse(PRIME)


def test_lagrange_at_zero_small_known_answer() -> None:
    # Points 1, 2, 3: c_1 = 2*3/((2-1)(3-1)) = 3, c_2 = 1*3/((1-2)(3-2)) = -3, c_3 = 1.
    assert lagrange_at_zero((1, 2, 3)) == (3, PRIME - 3, 1)
    # f(x) = 5 + 2x + x^2 -> f(1)=8, f(2)=13, f(3)=20; f(0) = 5.
    assert reconstruct([(1, 8), (2, 13), (3, 20)]) == 5
    # Two points of the line f(x) = 10 - 3x: f(2) = 4, f(5) = -5.
    assert reconstruct([(2, 4), (5, PRIME - 5)]) == 10


def test_lagrange_without_matches_direct_computation() -> None:
    points = (3, 8, 21, 2**40 + 5, 99)
    for removed in points:
        rest = tuple(x for x in points if x != removed)
        assert lagrange_without(points, removed) == lagrange_at_zero(rest)
    with pytest.raises(SecAggConfigError):
        lagrange_without(points, 4)


def test_reconstruct_with_every_path_gives_the_secret() -> None:
    secret = 0xC0FFEE
    xs = [x + 1 for x in (5, 9, 11, 40, 77, 78)]
    shares = dict(zip(xs, split(secret, threshold=3, points=xs, randbytes=seeded(1)), strict=True))
    pool = tuple(sorted(xs))[:4]
    assert reconstruct_with(shares, threshold=3, pool=pool) == secret
    without_first = {x: y for x, y in shares.items() if x != pool[0]}
    assert reconstruct_with(without_first, threshold=3, pool=pool) == secret
    only_tail = {x: shares[x] for x in xs[3:]}
    assert reconstruct_with(only_tail, threshold=3, pool=pool) == secret
    with pytest.raises(SecAggConfigError):
        reconstruct_with({xs[0]: shares[xs[0]]}, threshold=3, pool=pool)


def test_element_encoding_round_trip_and_range() -> None:
    for value in (0, 1, 2**256 - 1, PRIME - 1):
        data = element_to_bytes(value)
        assert len(data) == ELEMENT_BYTES
        assert element_from_bytes(data) == value
    with pytest.raises(SecAggMessageError, match="out of range"):
        element_from_bytes(PRIME.to_bytes(ELEMENT_BYTES, "big"))
    with pytest.raises(SecAggMessageError, match="out of range"):
        element_from_bytes(b"\xff" * ELEMENT_BYTES)
    with pytest.raises(SecAggMessageError):
        element_from_bytes(b"\x00" * (ELEMENT_BYTES - 1))
    with pytest.raises(SecAggMessageError):
        element_to_bytes(PRIME)


def test_split_refuses_bad_arguments() -> None:
    with pytest.raises(SecAggConfigError):
        split(1, threshold=0, points=[1, 2], randbytes=os.urandom)
    with pytest.raises(SecAggConfigError):
        split(1, threshold=3, points=[1, 2], randbytes=os.urandom)
    with pytest.raises(SecAggConfigError):
        split(1, threshold=1, points=[1, 1], randbytes=os.urandom)
    with pytest.raises(SecAggConfigError):
        split(1, threshold=1, points=[0, 2], randbytes=os.urandom)
    with pytest.raises(SecAggError):
        split(PRIME, threshold=1, points=[1], randbytes=os.urandom)


shamir_case = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.integers(min_value=0, max_value=2**256 - 1),
        st.integers(min_value=1, max_value=n),
        st.lists(
            st.integers(min_value=0, max_value=2**64 - 1), min_size=n, max_size=n, unique=True
        ),
        st.integers(min_value=0, max_value=2**32),
        st.randoms(use_true_random=False),
    )
)


@settings(deadline=None, max_examples=60)
@given(shamir_case)
def test_any_t_shares_reconstruct(case) -> None:
    secret, t, ids, seed, rnd = case
    points = [i + 1 for i in ids]
    shares = split(secret, threshold=t, points=points, randbytes=seeded(seed))
    pairs = list(zip(points, shares, strict=True))
    subset = rnd.sample(pairs, t)
    assert reconstruct(subset) == secret
    assert reconstruct(pairs) == secret


@settings(deadline=None, max_examples=60)
@given(shamir_case)
def test_t_minus_one_shares_give_a_wrong_secret(case) -> None:
    secret, t, ids, seed, rnd = case
    if t < 2:
        return
    points = [i + 1 for i in ids]
    shares = split(secret, threshold=t, points=points, randbytes=seeded(seed))
    subset = rnd.sample(list(zip(points, shares, strict=True)), t - 1)
    # Fails only if a uniformly random polynomial coefficient hits one value: p ~ 2^-521.
    assert reconstruct(subset) != secret
