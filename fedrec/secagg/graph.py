"""Neighbourhood graphs and the round policy that fixes them: who shares with whom, ``k`` and ``t``.

SecAgg+ replaces the complete graph of SecAgg by a sparse random ``k``-regular
graph, cutting client work from O(n) to O(k). The graph here is a Harary
graph ``H(k, n)`` on a random relabelling of the participants: place them on a
ring in a pseudorandom order and join each to its ``k // 2`` nearest on either
side, plus the diametrically opposite node when ``k`` is odd (which needs an
even ``n``). The order comes from a ChaCha20 stream keyed by a 32-byte seed
that the server cannot choose alone (:func:`graph_seed`: a hash of the
server's nonce and of every signed key advertisement of the round), so every
client recomputes its own neighbourhood and need not trust a neighbour list
sent by the server.

Policy (server and devices use the same functions):

* :func:`neighbourhood_degree` is THE degree of a round of ``n``
  (``"all"``, ``"auto"`` or an int; one argument order everywhere).
* :func:`secure_degree` / :func:`min_threshold` / :func:`check_security`
  derive the smallest safe ``k`` and ``t`` from :class:`SecurityParams`
  (Bell et al. 2020, section 4, with Chernoff-Hoeffding tail bounds); a device
  refuses a round below them (:class:`~fedrec.errors.SecAggSecurityError`).
* :func:`resolve_threshold` turns ``secagg.threshold`` into ``t``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from fedrec.errors import SecAggConfigError, SecAggSecurityError
from fedrec.secagg.crypto.prg import DOMAIN_GRAPH, expand

__all__ = [
    "DEFAULT_SECURITY",
    "GRAPH_SEED_BYTES",
    "Neighbours",
    "SecurityParams",
    "build_graph",
    "check_participants",
    "check_security",
    "check_threshold",
    "degree_of",
    "graph_seed",
    "min_threshold",
    "neighbourhood_degree",
    "neighbours_of",
    "resolve_threshold",
    "secure_degree",
]

logger = logging.getLogger("fedrec.secagg.graph")

Neighbours = int | Literal["all", "auto"]
"""``secagg.neighbours``: the complete graph, the secure minimum, or a requested degree."""

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
    """Check a setup's ``degree`` field: ``n - 1`` for ``None`` (complete graph), else ``degree`` itself.

    This validates a degree already chosen; :func:`neighbourhood_degree` chooses one.

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


def graph_seed(*, round_id: int, server_nonce: bytes, adverts: Mapping[int, bytes]) -> bytes:
    """The round's graph seed: SHA-256 over the server's nonce and every signed advertisement's digest.

    ``adverts`` maps each node that advertised keys to the SHA-256 digest of
    its signed advertisement (:func:`fedrec.secagg.crypto.identity.advert_digest`).
    The advertisements carry fresh keys each device drew after the setup, so
    the server can neither choose the seed nor predict it when it fixes the
    setup; all it can do is leave advertisers out, and each set it tries is
    one more draw of a graph from the same distribution (see README, threat model).

    Layout: ``b"fedrec-secagg graph v1\\0" || round u64 || nonce (32) || count u64
    || (node u64 || digest (32))`` for the nodes in ascending order.
    """
    _check_seed(server_nonce)
    h = hashlib.sha256(b"fedrec-secagg graph v1\x00")
    h.update(struct.pack(">Q", round_id) + server_nonce + struct.pack(">Q", len(adverts)))
    for node in sorted(adverts):
        digest = adverts[node]
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise SecAggConfigError(f"advertisement digest of node {node} must be 32 bytes")
        h.update(struct.pack(">Q", node) + digest)
    return h.digest()


# -- policy ------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityParams:
    """What a device assumes and requires of a round (Bell et al. 2020, section 4).

    Attributes
    ----------
    sigma:
        Security: the probability that the server and the corrupt devices
        learn more than the sum of the honest survivors is at most ``2^-sigma``
        (union bound over the ``n`` devices).
    eta:
        Correctness: the probability that a round fails because a device lost
        too many neighbours is at most ``2^-eta``. The server's concern, used
        only to choose ``t``; devices do not refuse on it.
    corrupt:
        ``gamma``: at most ``floor(gamma * n)`` of a round's ``n`` participants
        are corrupt and collude with the server.
    dropout:
        ``delta``: each participant drops out (or refuses) with probability
        at most ``delta``.
    """

    sigma: float = 40.0
    eta: float = 20.0
    corrupt: float = 0.05
    dropout: float = 0.10

    def __post_init__(self) -> None:
        for name in ("sigma", "eta"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SecAggConfigError(f"security {name} must be a positive number, got {value!r}")
        for name in ("corrupt", "dropout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 0.5):
                raise SecAggConfigError(f"security {name} must be in [0, 0.5), got {value!r}")


DEFAULT_SECURITY = SecurityParams()
"""sigma = 40, eta = 20, 5% corrupt, 10% dropout."""


def _kl(a: float, p: float) -> float:
    if a >= 1.0:
        return math.inf if p <= 0.0 else math.log(1.0 / p)
    if p <= 0.0:
        return math.inf
    return a * math.log(a / p) + (1.0 - a) * math.log((1.0 - a) / (1.0 - p))


def _tail(k: int, p: float, m: int) -> float:
    """``P[X >= m]`` for ``X`` the number of marked nodes among ``k`` drawn, each marked with rate ``p``.

    Chernoff-Hoeffding: ``exp(-k KL(m/k || p))``; it bounds the binomial and
    (Hoeffding 1963) the hypergeometric draw of a random relabelling alike.
    """
    if m > k:
        return 0.0
    if m <= k * p:
        return 1.0
    return math.exp(-k * _kl(m / k, p))


def _feasible(n: int, k: int) -> int:
    """``k`` made a degree a ``k``-regular graph on ``n`` nodes can have: at most ``n - 1``, even when ``n`` is odd."""
    k = min(max(k, 1), n - 1)
    if k < n - 1 and k % 2 == 1 and n % 2 == 1:
        k -= 1
    return max(k, 1)


def _connected_enough(n: int, k: int, params: SecurityParams) -> bool:
    """Removing the corrupt and dropped nodes leaves the honest survivors connected, except w.p. ``2^-sigma``.

    On the ring, the honest survivors fall apart only where ``k // 2``
    consecutive nodes are all removed: ``n (gamma + delta)^(k // 2) <= 2^-sigma``.
    """
    if k >= n - 1:
        return True
    removed = params.corrupt + params.dropout
    return removed <= 0.0 or math.log(n) + (k // 2) * math.log(removed) <= -params.sigma * math.log(2)


@lru_cache(maxsize=4096)
def min_threshold(n: int, k: int, params: SecurityParams = DEFAULT_SECURITY) -> int:
    """The smallest ``t`` that keeps every honest device's two secrets apart (w.p. ``1 - 2^-sigma``).

    The server and ``c`` corrupt neighbours of an honest device hold ``c``
    shares of each of its secrets, and each honest neighbour reveals at most
    one kind (honest devices refuse both): both secrets need ``k + c >= 2 t``.
    So ``t`` must exceed ``(k + c*) / 2`` for the largest ``c*`` that occurs
    with probability above ``2^-sigma / n`` (and never more than
    ``floor(gamma n)`` corrupt devices exist). Always a majority of ``k``.
    """
    corrupt_total = math.floor(params.corrupt * n)
    budget = 2.0 ** -params.sigma / n
    c = 0
    while c < min(k, corrupt_total) and _tail(k, params.corrupt, c + 1) > budget:
        c += 1
    return min(k, (k + c) // 2 + 1)


def _correct_threshold(n: int, k: int, params: SecurityParams) -> int:
    """The largest ``t`` for which a device keeps ``t`` live neighbours w.p. ``1 - 2^-eta / n``."""
    budget = 2.0 ** -params.eta / n
    d = 0
    while d < k and _tail(k, params.dropout, d + 1) > budget:
        d += 1
    return k - d


@lru_cache(maxsize=4096)
def secure_degree(n: int, params: SecurityParams = DEFAULT_SECURITY) -> int:
    """The smallest feasible degree meeting the security bound, and the correctness target when it can.

    Security needs the honest survivors connected (:func:`_connected_enough`)
    and a threshold no larger than ``k`` (:func:`min_threshold`); correctness
    wants that threshold to survive the expected dropouts. When no ``k < n - 1``
    meets both, the complete graph.
    """
    if n < 2:
        raise SecAggConfigError(f"need at least 2 participants, got {n}")
    for k in range(2, n - 1):
        if _feasible(n, k) != k or not _connected_enough(n, k, params):
            continue
        if min_threshold(n, k, params) <= _correct_threshold(n, k, params):
            return k
    return n - 1


def neighbourhood_degree(n: int, neighbours: Neighbours, *, params: SecurityParams = DEFAULT_SECURITY) -> int:
    """THE degree ``k`` of a round of ``n`` participants (``n - 1`` is the complete graph).

    ``"all"``: ``n - 1``. ``"auto"``: :func:`secure_degree`. An int: made
    feasible (capped at ``n - 1``, lowered by one when it and ``n`` are both
    odd) and raised to :func:`secure_degree` when below it, since devices
    would refuse it (logged).

    Raises
    ------
    SecAggConfigError
        ``neighbours`` is none of those, or ``n < 2``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SecAggConfigError(f"need at least 2 participants, got {n!r}")
    if neighbours == "all":
        return n - 1
    floor = secure_degree(n, params)
    if neighbours == "auto":
        return floor
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise SecAggConfigError(f"neighbours must be 'all', 'auto' or a positive int, got {neighbours!r}")
    k = _feasible(n, neighbours)
    if k < floor:
        logger.info("degree %d is below the security bound %d for n=%d; using %d", k, floor, n, floor)
        return floor
    return k


def check_security(n: int, k: int, t: int, *, params: SecurityParams | None) -> None:
    """A device's refusal of round parameters the server chose below the bound (``params=None``: no bound).

    Raises
    ------
    SecAggSecurityError
        ``k`` below :func:`secure_degree` (checked as the weaker "keeps the
        honest survivors connected") or ``t`` below :func:`min_threshold`.
    """
    if params is None:
        return
    if not _connected_enough(n, k, params):
        raise SecAggSecurityError(
            f"degree k={k} is below the security bound for n={n} participants "
            f"(sigma={params.sigma:g}, corrupt={params.corrupt:g}, dropout={params.dropout:g}; "
            f"needs k >= {secure_degree(n, params)})")
    least = min_threshold(n, k, params)
    if t < least:
        raise SecAggSecurityError(
            f"threshold t={t} is below the security bound t >= {least} for k={k}, n={n} "
            f"(corrupt={params.corrupt:g}, sigma={params.sigma:g})")


def resolve_threshold(
    threshold: int | float,
    *,
    n_participants: int,
    neighbours: Neighbours,
    allow_minority_threshold: bool = False,
    params: SecurityParams | None = DEFAULT_SECURITY,
) -> int:
    """The Shamir threshold ``t`` of a round (server policy).

    An ``int`` is returned as given (the server and the devices check it). A
    ``float`` ``f`` in ``(0, 1]`` is a fraction of each client's closed
    neighbourhood of ``k + 1`` nodes: ``t = ceil(f * (k + 1))``, raised to the
    majority ``k // 2 + 1`` (unless ``allow_minority_threshold``) and to
    :func:`min_threshold` (unless ``params`` is ``None``), capped at ``k``.
    """
    if isinstance(threshold, bool):
        raise SecAggConfigError(f"threshold must be an int or a float in (0, 1], got {threshold!r}")
    if isinstance(threshold, int):
        return threshold
    if not isinstance(threshold, float) or not (math.isfinite(threshold) and 0.0 < threshold <= 1.0):
        raise SecAggConfigError(f"threshold must be an int or a float in (0, 1], got {threshold!r}")
    k = neighbourhood_degree(n_participants, neighbours, params=params or DEFAULT_SECURITY) if params \
        else _plain_degree(n_participants, neighbours)
    wanted = math.ceil(round(threshold * (k + 1), 9))
    floor = 1 if allow_minority_threshold else k // 2 + 1
    if params is not None:
        floor = max(floor, min_threshold(n_participants, k, params))
    t = min(k, max(wanted, floor))
    if t != wanted:
        logger.info("threshold %.3f of %d nodes = %d, using t=%d (k=%d)", threshold, k + 1, wanted, t, k)
    return t


def _plain_degree(n: int, neighbours: Neighbours) -> int:
    """The degree without a security bound (``params=None``: tests of small graphs)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SecAggConfigError(f"need at least 2 participants, got {n!r}")
    if neighbours in ("all", "auto"):
        return n - 1
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise SecAggConfigError(f"neighbours must be 'all', 'auto' or a positive int, got {neighbours!r}")
    return _feasible(n, neighbours)
