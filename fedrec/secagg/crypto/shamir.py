"""Shamir secret sharing over the prime field GF(2^521 - 1).

The two secrets a client shares (its 32-byte self-mask seed and its 32-byte
X25519 mask-agreement private key) are 256-bit strings, so one element of a
field larger than 2^256 holds each of them whole: no splitting into limbs and
no reassembly errors. The Mersenne prime 2^521 - 1 is the smallest convenient
one above 2^512. Only ``t * k`` big-integer multiplications are needed per
secret, which stays far below a millisecond for the neighbourhood sizes used.

Evaluation points are ``node_id + 1`` so that every share is tied to the node
holding it, and the point is never zero (zero is where the secret lives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from fedrec.errors import SecAggConfigError, SecAggMessageError

__all__ = [
    "ELEMENT_BYTES",
    "PRIME",
    "element_from_bytes",
    "element_to_bytes",
    "inverse",
    "lagrange_at_zero",
    "random_element",
    "lagrange_without",
    "reconstruct",
    "reconstruct_with",
    "split",
]

PRIME = (1 << 521) - 1
"""The field modulus, a Mersenne prime larger than any 256-bit secret."""

ELEMENT_BYTES = 66
"""Big-endian width of one field element (521 bits round up to 66 bytes)."""


def element_to_bytes(value: int) -> bytes:
    """Fixed-width big-endian encoding of a field element."""
    if not 0 <= value < PRIME:
        raise SecAggMessageError("field element out of range [0, 2^521 - 1)")
    return value.to_bytes(ELEMENT_BYTES, "big")


def element_from_bytes(data: bytes) -> int:
    """Decode a field element, refusing wrong widths and values >= the prime."""
    if not isinstance(data, bytes) or len(data) != ELEMENT_BYTES:
        raise SecAggMessageError(f"field element must be {ELEMENT_BYTES} bytes")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise SecAggMessageError("field element out of range [0, 2^521 - 1)")
    return value


def inverse(value: int) -> int:
    """Multiplicative inverse modulo :data:`PRIME`; zero has none."""
    if value % PRIME == 0:
        raise SecAggConfigError("zero has no inverse in the field")
    return pow(value, -1, PRIME)


def random_element(randbytes: Callable[[int], bytes]) -> int:
    """Uniform field element by rejection sampling 521-bit strings."""
    while True:
        value = int.from_bytes(randbytes(ELEMENT_BYTES), "big") & PRIME
        if value != PRIME:
            return value


def split(
    secret: int,
    *,
    threshold: int,
    points: Sequence[int],
    randbytes: Callable[[int], bytes],
) -> list[int]:
    """Shares of ``secret`` at ``points``; any ``threshold`` of them rebuild it.

    A random polynomial of degree ``threshold - 1`` with constant term
    ``secret`` is evaluated by Horner's rule at each point.
    """
    _check_points(points)
    if not 1 <= threshold <= len(points):
        raise SecAggConfigError(
            f"threshold {threshold} must be in [1, {len(points)}] (number of share holders)"
        )
    if not 0 <= secret < PRIME:
        raise SecAggConfigError("secret does not fit in the field")
    coefficients = [secret] + [random_element(randbytes) for _ in range(threshold - 1)]
    coefficients.reverse()
    shares = []
    for x in points:
        acc = 0
        for c in coefficients:
            acc = (acc * x + c) % PRIME
        shares.append(acc)
    return shares


@lru_cache(maxsize=1024)
def lagrange_at_zero(points: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis coefficients that evaluate an interpolant at zero.

    ``c_i = prod_{m != i} x_m / (x_m - x_i)``; the denominators are inverted
    together with one modular inversion. Cached because a server rebuilding
    many secrets reuses the same sets of share holders.
    """
    _check_points(points)
    numerator = 1
    for x in points:
        numerator = numerator * x % PRIME
    denominators = []
    for i, xi in enumerate(points):
        den = xi
        for m, xm in enumerate(points):
            if m != i:
                den = den * (xm - xi) % PRIME
        denominators.append(den)
    return tuple(numerator * inv % PRIME for inv in _batch_inverse(denominators))


@lru_cache(maxsize=1024)
def lagrange_without(points: tuple[int, ...], removed: int) -> tuple[int, ...]:
    """Coefficients for ``points`` minus ``removed``, derived from those of ``points``.

    ``c_i(S) = c_i(S + r) * (x_r - x_i) / x_r``: O(t) instead of O(t^2), which
    matters in the complete graph where owners among the first holders each
    need the pool of holders without themselves.
    """
    if removed not in points:
        raise SecAggConfigError("removed point is not in the set")
    base = lagrange_at_zero(points)
    inv = inverse(removed)
    return tuple(
        c * (removed - x) % PRIME * inv % PRIME
        for c, x in zip(base, points, strict=True)
        if x != removed
    )


def _batch_inverse(values: Sequence[int]) -> list[int]:
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    running = inverse(prefix[-1])
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = running * prefix[i] % PRIME
        running = running * values[i] % PRIME
    return out


def reconstruct(shares: Sequence[tuple[int, int]]) -> int:
    """Interpolate ``(point, share)`` pairs at zero.

    With at least ``threshold`` shares of one polynomial this is the secret;
    with fewer it is a value unrelated to it.
    """
    if not shares:
        raise SecAggConfigError("cannot reconstruct from zero shares")
    points = tuple(x for x, _ in shares)
    return _combine(lagrange_at_zero(points), [y for _, y in shares])


def reconstruct_with(shares: Mapping[int, int], *, threshold: int, pool: tuple[int, ...]) -> int:
    """Rebuild a secret from ``threshold`` of ``shares`` (``point -> share``).

    ``pool`` is a sorted tuple of up to ``threshold + 1`` points shared by
    many secrets; when the first ``threshold`` of it, or all of it but one,
    hold shares, cached coefficients are reused. Otherwise the lowest
    ``threshold`` available points are used.
    """
    if len(shares) < threshold:
        raise SecAggConfigError(f"{len(shares)} shares, need {threshold}")
    head = pool[:threshold]
    if len(head) == threshold and all(x in shares for x in head):
        return _combine(lagrange_at_zero(head), [shares[x] for x in head])
    missing = [x for x in pool if x not in shares]
    if len(pool) == threshold + 1 and len(missing) == 1:
        chosen = tuple(x for x in pool if x != missing[0])
        return _combine(lagrange_without(pool, missing[0]), [shares[x] for x in chosen])
    return reconstruct(sorted(shares.items())[:threshold])


def _combine(coefficients: Sequence[int], values: Sequence[int]) -> int:
    return sum(c * y for c, y in zip(coefficients, values, strict=True)) % PRIME


def _check_points(points: Sequence[int]) -> None:
    if len(set(points)) != len(points):
        raise SecAggConfigError("share points must be distinct")
    if any(not 0 < x < PRIME for x in points):
        raise SecAggConfigError("share points must be non-zero field elements")
