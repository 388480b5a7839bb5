"""Neighbourhood graphs: who shares keys and masks with whom.

SecAgg+ replaces the complete graph of SecAgg by a sparse random ``k``-regular
graph, cutting client work from O(n) to O(k). The graph here is a Harary
graph ``H(k, n)`` on a random relabelling of the participants: place them on a
ring in a pseudorandom order and join each to its ``k // 2`` nearest on either
side, plus the diametrically opposite node when ``k`` is odd (which needs an
even ``n``). The order comes from a ChaCha20 stream keyed by the server's
32-byte ``graph_seed``, so every client recomputes its own neighbourhood and
need not trust a neighbour list sent by the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrec.secagg.errors import SecAggConfigError
from fedrec.secagg.prg import DOMAIN_GRAPH, expand

__all__ = [
    "GRAPH_SEED_BYTES",
    "build_graph",
    "check_participants",
    "check_threshold",
    "degree_of",
    "neighbours_of",
]

GRAPH_SEED_BYTES = 32
_MAX_ID = (1 << 64) - 1


def check_participants(participants: Sequence[int]) -> tuple[int, ...]:
    """Validate node ids: ints in [0, 2^64), unique, strictly increasing, >= 2."""
    ids = tuple(participants)
    if len(ids) < 2:
        raise SecAggConfigError(f"need at least 2 participants, got {len(ids)}")
    for node in ids:
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node <= _MAX_ID:
            raise SecAggConfigError(f"node id {node!r} is not an int in [0, 2^64)")
    if any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
        raise SecAggConfigError("participant ids must be unique and sorted ascending")
    return ids


def degree_of(n: int, degree: int | None) -> int:
    """Effective degree: ``n - 1`` for the complete graph, else ``degree`` checked.

    Raises
    ------
    SecAggConfigError
        ``degree`` outside ``[1, n - 1]`` or odd with an odd ``n`` (no
        ``k``-regular graph exists then).
    """
    if degree is None:
        return n - 1
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= n - 1:
        raise SecAggConfigError(f"degree {degree!r} must be an int in [1, {n - 1}] for n={n}")
    if degree % 2 == 1 and n % 2 == 1:
        raise SecAggConfigError(
            f"no {degree}-regular graph on {n} nodes (degree and n both odd); use an even degree"
        )
    return degree


def check_threshold(threshold: int, k: int, *, allow_minority_threshold: bool) -> None:
    """Refuse a threshold outside ``[1, k]``, or ``2 t <= k`` unless allowed.

    With a majority threshold a server cannot collect ``t`` shares of a
    client's self-mask seed from one half of its neighbours and ``t`` shares
    of its mask key from the other half, which would unmask that client.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= k:
        raise SecAggConfigError(f"threshold {threshold!r} must be an int in [1, k={k}]")
    if not allow_minority_threshold and 2 * threshold <= k:
        raise SecAggConfigError(
            f"threshold {threshold} is not a majority of k={k} neighbours (needs 2*t > k; "
            f"allow_minority_threshold=True accepts it against an honest-but-curious server)"
        )


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != GRAPH_SEED_BYTES:
        raise SecAggConfigError(f"graph seed must be {GRAPH_SEED_BYTES} bytes")


def _ring_order(participants: tuple[int, ...], seed: bytes, round_id: int) -> list[int]:
    keys = expand(seed, len(participants), dtype=np.uint64, round_id=round_id, domain=DOMAIN_GRAPH)
    order = np.argsort(keys, kind="stable")
    return [participants[int(i)] for i in order]


def _ring_neighbours(position: int, n: int, degree: int) -> set[int]:
    half = degree // 2
    out = {(position + d) % n for d in range(1, half + 1)}
    out |= {(position - d) % n for d in range(1, half + 1)}
    if degree % 2 == 1:
        out.add((position + n // 2) % n)
    return out


def neighbours_of(
    node: int,
    participants: Sequence[int],
    *,
    degree: int | None,
    seed: bytes,
    round_id: int,
) -> frozenset[int]:
    """Neighbours of ``node`` (never itself); all others when ``degree`` is None."""
    ids = check_participants(participants)
    _check_seed(seed)
    if node not in ids:
        raise SecAggConfigError(f"node {node} is not a participant")
    k = degree_of(len(ids), degree)
    if k == len(ids) - 1:
        return frozenset(ids) - {node}
    ring = _ring_order(ids, seed, round_id)
    position = ring.index(node)
    return frozenset(ring[p] for p in _ring_neighbours(position, len(ids), k))


def build_graph(
    participants: Sequence[int], *, degree: int | None, seed: bytes, round_id: int
) -> dict[int, frozenset[int]]:
    """Every participant's neighbourhood; symmetric and ``k``-regular."""
    ids = check_participants(participants)
    _check_seed(seed)
    k = degree_of(len(ids), degree)
    if k == len(ids) - 1:
        everyone = frozenset(ids)
        return {node: everyone - {node} for node in ids}
    ring = _ring_order(ids, seed, round_id)
    n = len(ids)
    return {ring[p]: frozenset(ring[q] for q in _ring_neighbours(p, n, k)) for p in range(n)}
