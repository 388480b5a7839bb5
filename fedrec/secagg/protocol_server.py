"""The SERVER side of one SecAgg+ round (no transport): routing, dropout tracking, unmasking.

Each ``collect_*`` method takes the replies that arrived for a stage
(``node id -> message or its dict form``) and returns the messages for the
next stage (``node id -> message``). Nodes that did not reply have dropped.

A reply that fails validation is logged with the reason, recorded in
:attr:`SecAggServer.rejected` and treated as a dropout, so one faulty or
malicious client cannot stop the round; with ``strict=True`` the first invalid
reply raises instead (and nothing from that stage is kept). When fewer than
``t`` clients remain, or a needed secret has fewer than ``t`` share holders
left, the round ends with :class:`SecAggAbort` before any share is requested
or used.

The graph is fixed only once the keys are in: its seed hashes the setup's
nonce and every accepted signed advertisement (:func:`fedrec.secagg.graph.graph_seed`),
exactly as each device recomputes it. Reconstruction is robust: every secret
rebuilt from more than ``t`` shares is checked against a second ``t``-subset,
and a disagreement aborts the round with
:class:`~fedrec.errors.SecAggInconsistentShareError` naming the holder whose
share is off (when ``t + 2`` or more shares pin it down).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fedrec.errors import (
    SecAggAbort,
    SecAggConfigError,
    SecAggError,
    SecAggInconsistentShareError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
)
from fedrec.secagg.crypto.identity import advert_digest, advert_statement, verify_advert
from fedrec.secagg.crypto.keys import KeyPair, bind_model, mask_seed
from fedrec.secagg.crypto.prg import DOMAIN_PAIR, DOMAIN_SELF, expand
from fedrec.secagg.crypto.shamir import element_from_bytes, reconstruct, reconstruct_with
from fedrec.secagg.graph import (
    DEFAULT_SECURITY,
    GRAPH_SEED_BYTES,
    Neighbours,
    SecurityParams,
    build_graph,
    check_participants,
    check_threshold,
    graph_seed,
    neighbourhood_degree,
)
from fedrec.secagg.layout import NO_MODEL
from fedrec.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    PeerKeys,
    RoutedShares,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    coerce,
    setup_digest,
)
from fedrec.secagg.quantize import QuantConfig, dequantize

__all__ = ["AggregateResult", "SecAggServer"]

logger = logging.getLogger("fedrec.secagg.protocol_server")

_SEED_LIMIT = 1 << 256
_M = TypeVar("_M", AdvertiseKeys, ShareKeys, MaskedInput, UnmaskResponse)


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """Outcome of a completed round.

    Attributes
    ----------
    sums:
        Segment name -> float64 sum over the contributors of the clipped
        inputs, within the quantization bound of :mod:`fedrec.secagg.quantize`.
    n_contributors:
        Number of clients whose masked input is in the sum.
    survivors:
        Their node ids, ascending.
    dropped:
        Participants whose input is not in the sum, ascending.
    rejected:
        Node id -> reason, for replies refused during the round.
    """

    sums: dict[str, np.ndarray]
    n_contributors: int
    survivors: list[int]
    dropped: list[int]
    rejected: dict[int, str] = field(default_factory=dict)


class SecAggServer:
    """Coordinator of one round among ``participants``.

    Parameters
    ----------
    round_id:
        Round identifier in ``[0, 2^64)``; bound into every key and ciphertext.
    participants:
        Node ids taking part (any order, unique).
    threshold:
        Shamir threshold ``t``: shares needed to rebuild a secret, and the
        fewest clients the round may end with. Must be in ``[1, k]`` and, unless
        ``allow_minority_threshold``, more than ``k / 2``.
    neighbours:
        ``"all"`` for the complete graph, ``"auto"`` for the secure minimum, or
        the degree ``k`` of the random ``k``-regular graph (raised to the
        security bound when below it; ``k >= n - 1`` means complete):
        :func:`fedrec.secagg.graph.neighbourhood_degree`.
    quant:
        Vector layout and ring; unset scales are resolved for ``n`` clients.
    graph_seed:
        32 bytes fixing the graph; fresh from the OS when omitted.
    strict:
        Raise on the first invalid reply instead of dropping its sender.
    security:
        The bound of :func:`~fedrec.secagg.graph.neighbourhood_degree`
        (``None``: take ``neighbours`` as given; small test graphs only).
    authority_key:
        The enrolment authority's public key, when the server has it: then
        advertisements that do not verify (a certificate the authority did not
        issue, a signature over other keys or another setup), and nodes that
        present one enrolment id twice, are dropped at once and logged
        (:attr:`rejected`); devices verify them anyway, but without this check
        one bad device makes every neighbour refuse the round.
    """

    def __init__(
        self,
        *,
        round_id: int,
        participants: Sequence[int],
        threshold: int,
        neighbours: Neighbours,
        quant: QuantConfig,
        graph_seed: bytes | None = None,
        strict: bool = False,
        allow_minority_threshold: bool = False,
        security: SecurityParams | None = DEFAULT_SECURITY,
        authority_key: bytes | None = None,
    ) -> None:
        ids = _sorted_ids(participants)
        k = _degree(len(ids), neighbours, security)
        degree = None if k >= len(ids) - 1 else k
        seed = os.urandom(GRAPH_SEED_BYTES) if graph_seed is None else graph_seed
        check_threshold(threshold, k, allow_minority_threshold=allow_minority_threshold)
        self._graph: dict[int, frozenset[int]] = {}
        self._authority = authority_key
        self.model_digest = NO_MODEL
        """The digest of the downlink devices masked against (:func:`fedrec.secagg.layout.model_digest`);
        set it before :meth:`collect_unmask` (:meth:`RoundDriver.bind_model`)."""
        try:
            self.setup = Setup(
                round_id=round_id,
                participants=ids,
                threshold=threshold,
                degree=degree,
                graph_seed=seed,
                quant=quant.resolve(len(ids)),
            )
        except SecAggMessageError as exc:
            raise SecAggConfigError(str(exc)) from None
        self._strict = strict
        self._setup_digest = setup_digest(self.setup)
        self._probe = KeyPair.generate(os.urandom)
        self._stage = "keys"
        self._abort_reason: str | None = None
        self.rejected: dict[int, str] = {}
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._subjects: dict[int, int] = {}
        self._holders: dict[int, frozenset[int]] = {}
        self._routed: dict[int, frozenset[int]] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._u1: frozenset[int] = frozenset()
        self._u2: frozenset[int] = frozenset()
        self._u3: frozenset[int] = frozenset()
        self._acc: np.ndarray | None = None
        self._result: AggregateResult | None = None

    def __repr__(self) -> str:
        return (
            f"SecAggServer(round_id={self.setup.round_id}, n={len(self.setup.participants)}, "
            f"t={self.setup.threshold}, k={self.setup.k}, stage={self._stage!r})"
        )

    @property
    def threshold(self) -> int:
        """Shamir threshold ``t``."""
        return self.setup.threshold

    @property
    def stage(self) -> str:
        """``keys``, ``shares``, ``masked``, ``unmask``, ``done`` or ``aborted``."""
        return self._stage

    @property
    def graph(self) -> dict[int, frozenset[int]]:
        """Every participant's neighbourhood (empty until the keys are collected)."""
        return dict(self._graph)

    def setup_messages(self) -> dict[int, Setup]:
        """Stage 0: the same :class:`Setup` for every participant."""
        return {node: self.setup for node in self.setup.participants}

    # -- stage plumbing -------------------------------------------------

    def _enter(self, stage: str) -> None:
        if self._stage == "aborted":
            raise SecAggAbort(f"round {self.setup.round_id} was aborted: {self._abort_reason}")
        if self._stage != stage:
            raise SecAggProtocolError(
                f"server: collect for stage {stage!r} called in stage {self._stage!r}"
            )

    def _abort(self, reason: str) -> SecAggAbort:
        self._stage = "aborted"
        self._abort_reason = reason
        self._acc = None
        logger.error("round %d aborted: %s", self.setup.round_id, reason)
        return SecAggAbort(f"round {self.setup.round_id} aborted: {reason}")

    def _require(self, alive: int, what: str) -> None:
        if alive < self.threshold:
            raise self._abort(f"{alive} {what}, threshold t={self.threshold} not met")

    def _accept(
        self,
        replies: Mapping[int, object],
        cls: type[_M],
        allowed: frozenset[int],
        check: Callable[[int, _M], None],
    ) -> dict[int, _M]:
        accepted: dict[int, _M] = {}
        reasons: dict[int, str] = {}
        for node, reply in replies.items():
            try:
                msg = coerce(cls, reply)
                self._check_sender(cls.__name__, node, msg.round_id, msg.node_id, allowed)
                check(node, msg)
            except SecAggError as exc:
                if self._strict:
                    raise
                reasons[node] = str(exc)
                continue
            accepted[node] = msg
        for node, reason in reasons.items():
            self.rejected.setdefault(node, reason)
            logger.warning(
                "round %d: rejected %s from node %s: %s",
                self.setup.round_id,
                cls.__name__,
                node,
                reason,
            )
        return accepted

    def _check_sender(
        self, kind: str, node: object, round_id: int, node_id: int, allowed: frozenset[int]
    ) -> None:
        if round_id != self.setup.round_id:
            raise SecAggMessageError(
                f"{kind}: round {round_id}, this round is {self.setup.round_id}"
            )
        if node_id != node:
            raise SecAggMessageError(f"{kind}: claims node {node_id} but arrived from node {node}")
        if node_id not in allowed:
            raise SecAggMessageError(f"{kind}: node {node_id} is not expected at this stage")

    # -- stage 1 -> 2 ---------------------------------------------------

    def collect_keys(
        self, replies: Mapping[int, AdvertiseKeys | Mapping[str, Any]]
    ) -> dict[int, PeerKeys]:
        """Advertised keys in; each live client's neighbours' keys out."""
        self._enter("keys")
        accepted = self._accept(
            replies, AdvertiseKeys, frozenset(self.setup.participants), self._check_advertise
        )
        accepted = self._drop_duplicate_keys(accepted)
        accepted = self._drop_duplicate_subjects(accepted)
        self._keys = {node: (m.c_pk, m.s_pk) for node, m in accepted.items()}
        self._u1 = frozenset(accepted)
        self._require(len(self._u1), "clients advertised keys")
        digests = {node: _digest(m, self._setup_digest) for node, m in accepted.items()}
        seed = graph_seed(round_id=self.setup.round_id, server_nonce=self.setup.graph_seed, adverts=digests)
        self._graph = build_graph(self.setup.participants, degree=self.setup.degree, seed=seed,
                                  round_id=self.setup.round_id)
        advertisers = tuple(sorted(self._u1))
        digest_list = tuple(digests[n] for n in advertisers)
        self._stage = "shares"
        logger.debug("round %d: %d clients advertised keys", self.setup.round_id, len(self._u1))
        out = {}
        for node in sorted(self._u1):
            peers = sorted(self._graph[node] & self._u1)
            out[node] = PeerKeys(
                round_id=self.setup.round_id,
                node_id=node,
                peers=tuple(peers),
                c_pks=tuple(self._keys[p][0] for p in peers),
                s_pks=tuple(self._keys[p][1] for p in peers),
                certificates=tuple(accepted[p].certificate for p in peers),
                signatures=tuple(accepted[p].signature for p in peers),
                advertisers=advertisers,
                digests=digest_list,
            )
        return out

    def _check_advertise(self, node: int, msg: AdvertiseKeys) -> None:
        if msg.c_pk == msg.s_pk:
            raise SecAggMessageError(f"AdvertiseKeys: node {node} sent two equal public keys")
        self._probe.agree(msg.c_pk)
        self._probe.agree(msg.s_pk)
        if self._authority is not None:
            cert = verify_advert(authority_key=self._authority, round_id=msg.round_id, node_id=msg.node_id,
                                 c_pk=msg.c_pk, s_pk=msg.s_pk, setup_digest=self._setup_digest,
                                 certificate=msg.certificate, signature=msg.signature)
            self._subjects[node] = cert.subject

    def _drop_duplicate_subjects(self, accepted: dict[int, AdvertiseKeys]) -> dict[int, AdvertiseKeys]:
        """Nodes presenting one enrolment id (one device posing as several) are all dropped (verified ids only)."""
        counts = Counter(self._subjects[n] for n in accepted if n in self._subjects)
        clashing = {n for n in accepted if n in self._subjects and counts[self._subjects[n]] > 1}
        if clashing and self._strict:
            raise SecAggIntegrityError(f"AdvertiseKeys: nodes {sorted(clashing)} present one enrolment id")
        for node in sorted(clashing):
            reason = f"AdvertiseKeys: enrolment id {self._subjects[node]} also presented by another node"
            self.rejected.setdefault(node, reason)
            logger.warning("round %d: rejected node %d: %s", self.setup.round_id, node, reason)
        return {n: m for n, m in accepted.items() if n not in clashing}

    def _drop_duplicate_keys(self, accepted: dict[int, AdvertiseKeys]) -> dict[int, AdvertiseKeys]:
        counts = Counter(k for m in accepted.values() for k in (m.c_pk, m.s_pk))
        clashing = {n for n, m in accepted.items() if counts[m.c_pk] > 1 or counts[m.s_pk] > 1}
        if clashing and self._strict:
            raise SecAggMessageError(f"AdvertiseKeys: nodes {sorted(clashing)} share public keys")
        for node in sorted(clashing):
            reason = "AdvertiseKeys: public key also advertised by another node"
            self.rejected.setdefault(node, reason)
            logger.warning("round %d: rejected node %d: %s", self.setup.round_id, node, reason)
        return {n: m for n, m in accepted.items() if n not in clashing}

    # -- stage 2 -> 3 ---------------------------------------------------

    def collect_shares(
        self, replies: Mapping[int, ShareKeys | Mapping[str, Any]]
    ) -> dict[int, RoutedShares]:
        """Encrypted shares in; each live client's incoming ciphertexts out."""
        self._enter("shares")
        accepted = self._accept(replies, ShareKeys, self._u1, self._check_share)
        self._u2 = frozenset(accepted)
        self._require(len(self._u2), "clients sent shares")
        inbox: dict[int, dict[int, bytes]] = {node: {} for node in self._u2}
        for sender, msg in accepted.items():
            self._holders[sender] = frozenset(msg.receivers) & self._u2
            for receiver, ciphertext in msg.as_mapping().items():
                if receiver in inbox:
                    inbox[receiver][sender] = ciphertext
        self._routed = {node: frozenset(box) for node, box in inbox.items()}
        self._stage = "masked"
        logger.debug("round %d: %d clients sent shares", self.setup.round_id, len(self._u2))
        return {
            node: RoutedShares.from_mapping(
                round_id=self.setup.round_id, node_id=node, ciphertexts=inbox[node]
            )
            for node in sorted(self._u2)
        }

    def _check_share(self, node: int, msg: ShareKeys) -> None:
        expected = self._graph[node] & self._u1
        if set(msg.receivers) != expected:
            raise SecAggMessageError(
                f"ShareKeys: node {node} addressed {len(msg.receivers)} receivers, expected "
                f"exactly its {len(expected)} live neighbours"
            )

    # -- stage 3 -> 4 ---------------------------------------------------

    def collect_masked(
        self, replies: Mapping[int, MaskedInput | Mapping[str, Any]]
    ) -> dict[int, UnmaskRequest]:
        """Masked vectors in; each survivor's unmask request out."""
        self._enter("masked")
        accepted = self._accept(replies, MaskedInput, self._u2, self._check_masked)
        self._u3 = frozenset(accepted)
        self._require(len(self._u3), "clients sent masked input")
        self._check_recoverable()
        acc = np.zeros(self.setup.quant.total_length, dtype=self.setup.quant.dtype)
        for msg in accepted.values():
            np.add(acc, msg.masked, out=acc)
        self._acc = acc
        self._requests = {
            node: UnmaskRequest(
                round_id=self.setup.round_id,
                node_id=node,
                survivors=tuple(sorted(self._routed[node] & self._u3)),
                dropped=tuple(sorted(self._routed[node] - self._u3)),
            )
            for node in sorted(self._u3)
        }
        self._stage = "unmask"
        logger.debug(
            "round %d: %d masked inputs, %d dropped after sharing",
            self.setup.round_id,
            len(self._u3),
            len(self._u2 - self._u3),
        )
        return dict(self._requests)

    def _check_masked(self, node: int, msg: MaskedInput) -> None:
        quant = self.setup.quant
        if msg.masked.dtype != quant.dtype:
            raise SecAggMessageError(
                f"MaskedInput: node {node} sent dtype {msg.masked.dtype}, expected {quant.dtype}"
            )
        if msg.masked.shape != (quant.total_length,):
            raise SecAggMessageError(
                f"MaskedInput: node {node} sent {msg.masked.shape[0]} elements, "
                f"expected {quant.total_length}"
            )

    def _needed(self) -> tuple[list[int], list[int]]:
        dropped = sorted(j for j in self._u2 - self._u3 if self._holders[j] & self._u3)
        return sorted(self._u3), dropped

    def _check_recoverable(self) -> None:
        survivors, dropped = self._needed()
        for node in survivors + dropped:
            alive = len(self._holders[node] & self._u3)
            if alive < self.threshold:
                what = "self-mask seed" if node in self._u3 else "mask key"
                raise self._abort(
                    f"only {alive} surviving holders of node {node}'s {what} shares, "
                    f"threshold t={self.threshold} not met"
                )

    # -- stage 4 -> result ----------------------------------------------

    def collect_unmask(
        self, replies: Mapping[int, UnmaskResponse | Mapping[str, Any]]
    ) -> AggregateResult:
        """Revealed shares in; the unmasked, dequantized per-segment sums out."""
        self._enter("unmask")
        accepted = self._accept(replies, UnmaskResponse, self._u3, self._check_unmask)
        self._require(len(accepted), "clients answered the unmask request")
        seed_points, key_points = self._gather(accepted)
        survivors, dropped = self._needed()
        pool = tuple(node + 1 for node in sorted(accepted))[: self.threshold + 1]
        seeds = {j: self._rebuild_seed(j, seed_points.get(j, {}), pool) for j in survivors}
        keys = {j: self._rebuild_key(j, key_points.get(j, {}), pool) for j in dropped}
        assert self._acc is not None
        acc = self._acc
        self._remove_masks(acc, seeds, keys)
        self._check_reachable(acc, len(survivors))
        sums = dequantize(acc, self.setup.quant, n_clients=len(survivors))
        self._acc = None
        self._result = AggregateResult(
            sums=sums,
            n_contributors=len(survivors),
            survivors=survivors,
            dropped=sorted(set(self.setup.participants) - self._u3),
            rejected=dict(self.rejected),
        )
        self._stage = "done"
        logger.debug(
            "round %d: unmasked the sum of %d clients (%d shares from %d responders)",
            self.setup.round_id,
            len(survivors),
            len(seeds) + len(keys),
            len(accepted),
        )
        return self._result

    def _check_reachable(self, acc: np.ndarray, n: int) -> None:
        """Refuse an unmasked sum no ``n`` clipped inputs can reach (masks that did not cancel).

        Devices that masked against different downlinks (or with keys the
        server substituted) leave uniformly random ring elements; each lands
        outside the reachable range ``[0, n * ceil((hi - lo) * scale)]`` with
        probability above 1/2 at the ring sizes ``resolve`` picks, so a vector
        of ``L`` elements passes by chance with probability below ``2^-L``.
        """
        quant = self.setup.quant
        for spec, (start, stop) in zip(quant.segments, quant.bounds().values(), strict=True):
            assert spec.scale is not None
            limit = n * math.ceil((spec.hi - spec.lo) * spec.scale)
            outside = int(np.count_nonzero(acc[start:stop] > limit))
            if outside:
                raise self._integrity(
                    f"the unmasked sum of segment {spec.name!r} is out of reach of {n} clipped inputs at "
                    f"{outside} of {stop - start} elements: the masks did not cancel (devices masked against "
                    f"different downlinks or keys); the sum is discarded")

    def _check_unmask(self, node: int, msg: UnmaskResponse) -> None:
        request = self._requests[node]
        if (msg.survivors, msg.dropped) != (request.survivors, request.dropped):
            raise SecAggMessageError(
                f"UnmaskResponse: node {node} answered for a different survivor/dropped split"
            )
        for share in msg.seed_shares + msg.key_shares:
            element_from_bytes(share)

    def _gather(
        self, accepted: Mapping[int, UnmaskResponse]
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        seed_points: dict[int, dict[int, int]] = {}
        key_points: dict[int, dict[int, int]] = {}
        for holder, msg in accepted.items():
            for owner, share in zip(msg.survivors, msg.seed_shares, strict=True):
                seed_points.setdefault(owner, {})[holder + 1] = element_from_bytes(share)
            for owner, share in zip(msg.dropped, msg.key_shares, strict=True):
                key_points.setdefault(owner, {})[holder + 1] = element_from_bytes(share)
        return seed_points, key_points

    def _interpolate(
        self, node: int, points: dict[int, int], what: str, pool: tuple[int, ...]
    ) -> int:
        if len(points) < self.threshold:
            raise self._abort(
                f"only {len(points)} shares of node {node}'s {what} arrived, "
                f"threshold t={self.threshold} not met"
            )
        value = reconstruct_with(points, threshold=self.threshold, pool=pool)
        if len(points) > self.threshold:
            self._cross_check(node, points, what, value)
        return value

    def _cross_check(self, node: int, points: dict[int, int], what: str, value: int) -> None:
        """Rebuild from ``t``-subsets covering every point; a disagreement means a share is off.

        Every point is in some window and each window differs from the pool's
        subset, so one shifted share changes at least one result. With a
        majority threshold (``m <= k < 2 t`` points) that is two windows.
        """
        t = self.threshold
        ordered = sorted(points.items())
        if all(reconstruct(w) == value for w in _windows(ordered, t)):
            return
        holder = _odd_one_out(ordered, t)
        who = "an unidentified holder" if holder is None else f"holder node {holder - 1}"
        reason = (f"shares of node {node}'s {what} are inconsistent: {who} sent a share off the polynomial "
                  f"({len(points)} shares, t={t})")
        self._abort(reason)
        raise SecAggInconsistentShareError(
            f"round {self.setup.round_id} aborted: {reason}", owner=node,
            holder=None if holder is None else holder - 1)

    def _rebuild_seed(self, node: int, points: dict[int, int], pool: tuple[int, ...]) -> bytes:
        value = self._interpolate(node, points, "self-mask seed", pool)
        if value >= _SEED_LIMIT:
            raise self._integrity(f"shares of node {node}'s self-mask seed are inconsistent")
        return value.to_bytes(32, "big")

    def _rebuild_key(self, node: int, points: dict[int, int], pool: tuple[int, ...]) -> KeyPair:
        value = self._interpolate(node, points, "mask key", pool)
        if value >= _SEED_LIMIT:
            raise self._integrity(f"shares of node {node}'s mask key are inconsistent")
        pair = KeyPair.from_private_bytes(value.to_bytes(32, "big"))
        if pair.public != self._keys[node][1]:
            raise self._integrity(f"shares of node {node}'s mask key do not match its public key")
        return pair

    def _integrity(self, reason: str) -> SecAggIntegrityError:
        self._abort(reason)
        return SecAggIntegrityError(f"round {self.setup.round_id} aborted: {reason}")

    def _remove_masks(
        self, acc: np.ndarray, seeds: Mapping[int, bytes], keys: Mapping[int, KeyPair]
    ) -> None:
        n, dtype, rid = acc.shape[0], acc.dtype, self.setup.round_id
        for seed in seeds.values():
            np.subtract(
                acc, expand(seed, n, dtype=dtype, round_id=rid, domain=DOMAIN_SELF), out=acc
            )
        for dropped, pair in keys.items():
            for survivor in sorted(self._holders[dropped] & self._u3):
                shared = pair.agree(self._keys[survivor][1])
                seed = bind_model(mask_seed(shared, round_id=rid, a=dropped, b=survivor),
                                  model_digest=self.model_digest)
                stream = expand(seed, n, dtype=dtype, round_id=rid, domain=DOMAIN_PAIR)
                if dropped > survivor:
                    np.subtract(acc, stream, out=acc)
                else:
                    np.add(acc, stream, out=acc)

    def result(self) -> AggregateResult:
        """The completed round's result; raises if the round aborted or is not finished."""
        if self._stage == "aborted":
            raise SecAggAbort(f"round {self.setup.round_id} was aborted: {self._abort_reason}")
        if self._result is None:
            raise SecAggProtocolError(f"round {self.setup.round_id} is at stage {self._stage!r}")
        return self._result


def _sorted_ids(participants: Sequence[int]) -> tuple[int, ...]:
    try:
        ordered = sorted(participants)
    except TypeError:
        raise SecAggConfigError("participant ids must be ints") from None
    return check_participants(ordered)


def _degree(n: int, neighbours: Neighbours, security: SecurityParams | None) -> int:
    if security is not None:
        return neighbourhood_degree(n, neighbours, params=security)
    if neighbours in ("all", "auto"):
        return n - 1
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise SecAggConfigError(f"neighbours must be 'all', 'auto' or a positive int, got {neighbours!r}")
    return min(neighbours, n - 1)


def _digest(msg: AdvertiseKeys, setup: bytes) -> bytes:
    statement = advert_statement(round_id=msg.round_id, node_id=msg.node_id, c_pk=msg.c_pk, s_pk=msg.s_pk,
                                 setup_digest=setup, certificate=msg.certificate)
    return advert_digest(statement, msg.signature)


def _odd_one_out(ordered: list[tuple[int, int]], t: int) -> int | None:
    """The one point whose removal leaves the others on one polynomial, if exactly one does (needs ``t + 2``)."""
    if len(ordered) < t + 2:
        return None
    suspects = []
    for i, (x, _) in enumerate(ordered):
        rest = ordered[:i] + ordered[i + 1 :]
        if len({reconstruct(w) for w in _windows(rest, t)}) == 1:
            suspects.append(x)
    return suspects[0] if len(suspects) == 1 else None


def _windows(ordered: list[tuple[int, int]], t: int) -> list[list[tuple[int, int]]]:
    """Consecutive ``t``-subsets of ``ordered`` (more than ``t`` points) that together cover every point."""
    starts = [*range(0, len(ordered) - t, t), len(ordered) - t]
    return [ordered[i : i + t] for i in starts]
