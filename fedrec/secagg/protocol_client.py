"""The DEVICE side of one SecAgg+ round as a small state machine (no transport).

``advertise -> share -> mask -> unmask``, each called once with the server's
message for that stage. Any refusal (a :class:`SecAggError` raised while
handling a server message) aborts the client's part in the round: every later
call raises too, because a server that sent one inconsistent message is not
trusted with an answer to the next. Errors in the client's own input vector
are the exception: they are raised before anything is sent and leave the
state untouched so the caller can fix the input and call again.

Against a server that cheats, a client (with its :class:`DeviceTrust`)
refuses round settings below the security bound (:func:`fedrec.secagg.graph.check_security`),
signs its advertisement with its certified identity key, recomputes the graph
from the hash of every signed advertisement, and verifies each neighbour's
certificate and signature before it shares anything; the pairwise masks are
bound to the digest of the downlink it trained on.

Secrets (private keys, the self-mask seed, derived keys, shares) live in
private attributes, never appear in the repr or in log records, and are
dropped as soon as the protocol no longer needs them.

:meth:`SecAggClient.to_state` and :meth:`SecAggClient.from_state` move the
whole client into and out of a device-state mapping of numpy arrays
(:mod:`fedrec.secagg.device_state`), so each stage may run in a different process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from fedrec.errors import (
    SecAggError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
    SecAggStateError,
)
from fedrec.secagg.crypto.identity import DeviceIdentity, advert_digest, advert_statement, verify_advert
from fedrec.secagg.crypto.keys import (
    KeyPair,
    bind_model,
    decrypt_shares,
    encrypt_shares,
    mask_seed,
    share_key,
)
from fedrec.secagg.crypto.prg import DOMAIN_PAIR, DOMAIN_SELF, expand
from fedrec.secagg.crypto.shamir import element_to_bytes, split
from fedrec.secagg.device_state import ClientSnapshot, decode, encode
from fedrec.secagg.graph import (
    DEFAULT_SECURITY,
    SecurityParams,
    check_security,
    check_threshold,
    graph_seed,
    neighbours_of,
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
from fedrec.secagg.quantize import quantize

__all__ = ["DeviceTrust", "SecAggClient"]

logger = logging.getLogger("fedrec.secagg.protocol_client")

SEED_BYTES = 32

_NEW = "new"
_ADVERTISED = "advertised"
_SHARED = "shared"
_MASKED = "masked"
_DONE = "done"
_ABORTED = "aborted"


@dataclass(frozen=True)
class DeviceTrust:
    """What a device brings to every round: its certified identity, the anchor, its security bound.

    Attributes
    ----------
    identity:
        The device's Ed25519 identity key and certificate.
    authority_key:
        The enrolment authority's Ed25519 public key (32 bytes): the only key
        peers' certificates are checked against. Never taken from the server.
    security:
        The bound the device holds the server's ``k`` and ``t`` to;
        ``None`` accepts any (small test graphs only).
    """

    identity: DeviceIdentity
    authority_key: bytes = field(repr=False)
    security: SecurityParams | None = DEFAULT_SECURITY


class SecAggClient:
    """One client's part in one secure-aggregation round.

    Parameters
    ----------
    node_id:
        This client's id (an int in ``[0, 2^64)``), as listed in the setup.
    trust:
        Identity, trust anchor and security bound (:class:`DeviceTrust`).
    rng:
        Source of the stochastic-rounding coins; a fresh OS-seeded generator
        when omitted.
    randbytes:
        Source of key material, seeds, polynomial coefficients and nonces.
        Defaults to :func:`os.urandom`; tests inject a deterministic source.
    allow_minority_threshold:
        Accept ``2 t <= k`` (safe only against an honest-but-curious server).
    """

    def __init__(
        self,
        *,
        node_id: int,
        trust: DeviceTrust,
        rng: np.random.Generator | None = None,
        randbytes: Callable[[int], bytes] | None = None,
        allow_minority_threshold: bool = False,
    ) -> None:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id < 1 << 64:
            raise SecAggMessageError(f"node id {node_id!r} is not an int in [0, 2^64)")
        if not isinstance(trust, DeviceTrust):
            raise SecAggMessageError(f"trust must be a DeviceTrust, got {type(trust).__name__}")
        self._node_id = node_id
        self._trust = trust
        self._rng = rng if rng is not None else np.random.default_rng()
        self._randbytes = randbytes if randbytes is not None else os.urandom
        self._allow_minority = allow_minority_threshold
        self._state = _NEW
        self._setup: Setup | None = None
        self._setup_digest = bytes(32)
        self._neighbours: frozenset[int] = frozenset()
        self._c_key: KeyPair | None = None
        self._s_key: KeyPair | None = None
        self._seed: bytes | None = None
        self._share_keys: dict[int, bytes] = {}
        self._mask_seeds: dict[int, bytes] = {}
        self._held: dict[int, tuple[int, int]] = {}
        self._answered: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._answer: UnmaskResponse | None = None

    def __repr__(self) -> str:
        return f"SecAggClient(node_id={self._node_id}, state={self._state!r}, secrets=<redacted>)"

    @property
    def node_id(self) -> int:
        """This client's node id."""
        return self._node_id

    @property
    def state(self) -> str:
        """``new``, ``advertised``, ``shared``, ``masked``, ``done`` or ``aborted``."""
        return self._state

    @property
    def neighbours(self) -> frozenset[int]:
        """Neighbours from the setup's graph (empty before :meth:`advertise`)."""
        return self._neighbours

    @contextmanager
    def _stage(self, name: str, expected: str) -> Iterator[None]:
        if self._state != expected:
            raise SecAggProtocolError(
                f"node {self._node_id}: {name} called in state {self._state!r} "
                f"(expected {expected!r})"
            )
        try:
            yield
        except SecAggError as exc:
            self._abort()
            logger.warning("node %d refused %s: %s", self._node_id, name, exc)
            raise

    def _abort(self) -> None:
        self._state = _ABORTED
        self._forget_keys()
        self._held.clear()
        self._answer = None

    def _forget_keys(self) -> None:
        self._c_key = None
        self._s_key = None
        self._seed = None
        self._share_keys.clear()
        self._mask_seeds.clear()

    def _check_addressing(self, kind: str, round_id: int, node_id: int) -> Setup:
        setup = self._setup
        assert setup is not None
        if round_id != setup.round_id:
            raise SecAggMessageError(f"{kind}: round {round_id}, this round is {setup.round_id}")
        if node_id != self._node_id:
            raise SecAggMessageError(f"{kind}: addressed to node {node_id}, not {self._node_id}")
        return setup

    def advertise(self, setup: Setup | Mapping[str, object]) -> AdvertiseKeys:
        """Stage 1: check the round settings and publish two fresh public keys."""
        with self._stage("advertise", _NEW):
            setup = coerce(Setup, setup)
            if self._node_id not in setup.participants:
                raise SecAggMessageError(f"Setup: node {self._node_id} is not a participant")
            check_threshold(setup.threshold, setup.k, allow_minority_threshold=self._allow_minority)
            check_security(len(setup.participants), setup.k, setup.threshold, params=self._trust.security)
            self._setup = setup
            self._setup_digest = setup_digest(setup)
            self._c_key = KeyPair.generate(self._randbytes)
            self._s_key = KeyPair.generate(self._randbytes)
            self._seed = self._randbytes(SEED_BYTES)
            if self._c_key.public == self._s_key.public:
                raise SecAggProtocolError("generated identical key pairs; randomness is broken")
            self._state = _ADVERTISED
            logger.debug("node %d advertised keys for round %d", self._node_id, setup.round_id)
            return self._advert(setup.round_id)

    def _advert(self, round_id: int) -> AdvertiseKeys:
        """This node's signed advertisement (Ed25519 signatures are deterministic: the same every call)."""
        assert self._c_key is not None and self._s_key is not None
        identity = self._trust.identity
        return AdvertiseKeys(
            round_id=round_id,
            node_id=self._node_id,
            c_pk=self._c_key.public,
            s_pk=self._s_key.public,
            certificate=identity.certificate.to_bytes(),
            signature=identity.sign_advert(
                round_id=round_id, node_id=self._node_id, c_pk=self._c_key.public, s_pk=self._s_key.public,
                setup_digest=self._setup_digest),
        )

    def share(self, keys: PeerKeys | Mapping[str, object]) -> ShareKeys:
        """Stage 2: secret-share ``b`` and ``s_sk`` among the neighbours whose keys arrived."""
        with self._stage("share", _ADVERTISED):
            keys = coerce(PeerKeys, keys)
            setup = self._check_addressing("PeerKeys", keys.round_id, keys.node_id)
            self._neighbours = self._graph_from(keys, setup)
            self._check_peer_keys(keys, setup.threshold)
            self._verify_peers(keys, setup.round_id)
            self._agree_with_peers(keys, setup.round_id)
            ciphertexts = self._encrypt_shares(setup, sorted(keys.peers))
            self._c_key = None
            self._s_key = None
            self._state = _SHARED
            logger.debug("node %d encrypted shares for %d peers", self._node_id, len(ciphertexts))
            return ShareKeys.from_mapping(
                round_id=setup.round_id, node_id=self._node_id, ciphertexts=ciphertexts
            )

    def _agree_with_peers(self, keys: PeerKeys, round_id: int) -> None:
        """Derive every share key and pairwise mask seed now, refusing bad keys early."""
        assert self._c_key is not None and self._s_key is not None
        for peer, c_pk, s_pk in zip(keys.peers, keys.c_pks, keys.s_pks, strict=True):
            self._share_keys[peer] = share_key(self._c_key.agree(c_pk), round_id=round_id)
            self._mask_seeds[peer] = mask_seed(
                self._s_key.agree(s_pk), round_id=round_id, a=self._node_id, b=peer
            )

    def _graph_from(self, keys: PeerKeys, setup: Setup) -> frozenset[int]:
        """This node's neighbours under the seed hashed from every advertisement (never the server's list)."""
        digests = keys.digest_map()
        strangers = sorted(set(digests) - set(setup.participants))
        if strangers:
            raise SecAggMessageError(f"PeerKeys: advertisers {strangers} are not participants")
        own = self._advert(setup.round_id)
        mine = advert_digest(advert_statement(
            round_id=own.round_id, node_id=own.node_id, c_pk=own.c_pk, s_pk=own.s_pk,
            setup_digest=self._setup_digest, certificate=own.certificate), own.signature)
        if digests.get(self._node_id) != mine:
            raise SecAggIntegrityError(
                f"PeerKeys: the advertisement digest listed for node {self._node_id} is not the one it signed")
        seed = graph_seed(round_id=setup.round_id, server_nonce=setup.graph_seed, adverts=digests)
        return neighbours_of(self._node_id, setup.participants, degree=setup.degree, seed=seed,
                             round_id=setup.round_id)

    def _verify_peers(self, keys: PeerKeys, round_id: int) -> None:
        """Every neighbour's certificate and signature, checked against the trust anchor, before any share.

        Raises
        ------
        SecAggIntegrityError
            A certificate not from the authority, a signature over other keys
            (key substitution), a digest that is not the advertisement's, or
            two neighbours (or a neighbour and this node) with one enrolment id.
        """
        digests = keys.digest_map()
        subjects = {self._trust.identity.certificate.subject: self._node_id}
        rows = zip(keys.peers, keys.c_pks, keys.s_pks, keys.certificates, keys.signatures, strict=True)
        for peer, c_pk, s_pk, cert, sig in rows:
            try:
                subject = verify_advert(authority_key=self._trust.authority_key, round_id=round_id, node_id=peer,
                                        c_pk=c_pk, s_pk=s_pk, setup_digest=self._setup_digest, certificate=cert,
                                        signature=sig).subject
            except SecAggIntegrityError as exc:
                raise SecAggIntegrityError(f"PeerKeys: node {peer} refused: {exc}") from None
            statement = advert_statement(round_id=round_id, node_id=peer, c_pk=c_pk, s_pk=s_pk,
                                         setup_digest=self._setup_digest, certificate=cert)
            if advert_digest(statement, sig) != digests.get(peer):
                raise SecAggIntegrityError(f"PeerKeys: node {peer}'s advertisement does not match its listed digest")
            if subject in subjects:
                raise SecAggIntegrityError(
                    f"PeerKeys: nodes {subjects[subject]} and {peer} present one enrolment id {subject}")
            subjects[subject] = peer

    def _check_peer_keys(self, keys: PeerKeys, threshold: int) -> None:
        expected = self._neighbours & set(keys.advertisers)
        if set(keys.peers) != expected:
            strangers = sorted(set(keys.peers) - expected)
            withheld = sorted(expected - set(keys.peers))
            raise SecAggMessageError(
                f"PeerKeys: peers do not match this node's advertising neighbours: {strangers} are not "
                f"neighbours, {withheld} were withheld")
        if len(keys.peers) < threshold:
            raise SecAggProtocolError(
                f"PeerKeys: only {len(keys.peers)} neighbours left, threshold is {threshold}"
            )
        assert self._c_key is not None and self._s_key is not None
        own = {self._c_key.public, self._s_key.public}
        seen: set[bytes] = set()
        for peer, c_pk, s_pk in zip(keys.peers, keys.c_pks, keys.s_pks, strict=True):
            if c_pk == s_pk:
                raise SecAggMessageError(f"PeerKeys: node {peer} advertised two equal public keys")
            if c_pk in own or s_pk in own:
                raise SecAggMessageError(f"PeerKeys: node {peer} reuses this node's public key")
            if c_pk in seen or s_pk in seen:
                raise SecAggMessageError(f"PeerKeys: node {peer} repeats another node's public key")
            seen.update((c_pk, s_pk))

    def _encrypt_shares(self, setup: Setup, peers: list[int]) -> dict[int, bytes]:
        assert self._seed is not None and self._s_key is not None
        points = [peer + 1 for peer in peers]
        seed_shares = split(
            int.from_bytes(self._seed, "big"),
            threshold=setup.threshold,
            points=points,
            randbytes=self._randbytes,
        )
        key_shares = split(
            int.from_bytes(self._s_key.private_bytes(), "big"),
            threshold=setup.threshold,
            points=points,
            randbytes=self._randbytes,
        )
        return {
            peer: encrypt_shares(
                self._share_keys[peer],
                round_id=setup.round_id,
                sender=self._node_id,
                receiver=peer,
                seed_share=b_share,
                key_share=k_share,
                nonce=self._randbytes(12),
            )
            for peer, b_share, k_share in zip(peers, seed_shares, key_shares, strict=True)
        }

    def mask(
        self,
        shares: RoutedShares | Mapping[str, object],
        segments: Mapping[str, np.ndarray] | np.ndarray,
        *,
        model_digest: bytes = NO_MODEL,
    ) -> MaskedInput:
        """Stage 3: keep the neighbours' shares and send the masked, quantized input.

        ``segments`` maps each layout segment name to a 1-D float array of
        its length; a bare array is accepted when the layout has one segment.
        Values are clipped to each segment's bounds before quantization.
        ``model_digest`` (:func:`fedrec.secagg.layout.model_digest` of the
        downlink the input was computed from) is bound into every pairwise mask.
        """
        if self._state != _SHARED:
            raise SecAggProtocolError(
                f"node {self._node_id}: mask called in state {self._state!r} (expected 'shared')"
            )
        assert self._setup is not None
        quant = self._setup.quant
        if isinstance(segments, np.ndarray):
            if len(quant.segments) != 1:
                raise SecAggMessageError("a bare array needs a one-segment layout; pass a dict")
            segments = {quant.segments[0].name: segments}
        encoded = quantize(segments, quant, rng=self._rng)
        with self._stage("mask", _SHARED):
            routed = coerce(RoutedShares, shares)
            setup = self._check_addressing("RoutedShares", routed.round_id, routed.node_id)
            self._open_shares(routed, setup)
            self._apply_masks(encoded, setup, sorted(routed.senders), model_digest)
            self._forget_keys()
            self._state = _MASKED
            logger.debug(
                "node %d masked %d elements with %d pairwise masks",
                self._node_id,
                encoded.shape[0],
                len(routed.senders),
            )
            return MaskedInput(round_id=setup.round_id, node_id=self._node_id, masked=encoded)

    def _open_shares(self, routed: RoutedShares, setup: Setup) -> None:
        strangers = sorted(set(routed.senders) - set(self._share_keys))
        if strangers:
            raise SecAggMessageError(
                f"RoutedShares: nodes {strangers} are not peers this node shared keys with"
            )
        if len(routed.senders) < setup.threshold:
            raise SecAggProtocolError(
                f"RoutedShares: only {len(routed.senders)} neighbours sent shares, "
                f"threshold is {setup.threshold}"
            )
        for sender, ciphertext in routed.as_mapping().items():
            self._held[sender] = decrypt_shares(
                self._share_keys[sender],
                round_id=setup.round_id,
                sender=sender,
                receiver=self._node_id,
                ciphertext=ciphertext,
            )

    def _apply_masks(self, acc: np.ndarray, setup: Setup, peers: list[int], model_digest: bytes) -> None:
        assert self._seed is not None
        n, dtype, rid = acc.shape[0], acc.dtype, setup.round_id
        np.add(acc, expand(self._seed, n, dtype=dtype, round_id=rid, domain=DOMAIN_SELF), out=acc)
        for peer in peers:
            key = bind_model(self._mask_seeds[peer], model_digest=model_digest)
            stream = expand(key, n, dtype=dtype, round_id=rid, domain=DOMAIN_PAIR)
            if peer > self._node_id:
                np.add(acc, stream, out=acc)
            else:
                np.subtract(acc, stream, out=acc)

    def unmask(self, request: UnmaskRequest | Mapping[str, object]) -> UnmaskResponse:
        """Stage 4: reveal shares of ``b`` for survivors and of ``s_sk`` for dropped peers.

        Refuses a peer listed as both survivor and dropped, a peer whose
        shares this node does not hold, fewer than ``t`` survivors, and any
        second request with a different split (the same request again gets
        the same answer).
        """
        if self._state == _DONE:
            return self._repeat_answer(request)
        with self._stage("unmask", _MASKED):
            req = coerce(UnmaskRequest, request)
            setup = self._check_addressing("UnmaskRequest", req.round_id, req.node_id)
            self._check_split(req, setup.threshold)
            response = UnmaskResponse(
                round_id=setup.round_id,
                node_id=self._node_id,
                survivors=req.survivors,
                seed_shares=tuple(element_to_bytes(self._held[j][0]) for j in req.survivors),
                dropped=req.dropped,
                key_shares=tuple(element_to_bytes(self._held[j][1]) for j in req.dropped),
            )
            self._answered = (req.survivors, req.dropped)
            self._answer = response
            self._held.clear()
            self._state = _DONE
            logger.debug(
                "node %d revealed shares: %d survivors, %d dropped",
                self._node_id,
                len(req.survivors),
                len(req.dropped),
            )
            return response

    def _repeat_answer(self, request: UnmaskRequest | Mapping[str, object]) -> UnmaskResponse:
        with self._stage("unmask", _DONE):
            req = coerce(UnmaskRequest, request)
            self._check_addressing("UnmaskRequest", req.round_id, req.node_id)
            if (req.survivors, req.dropped) != self._answered or self._answer is None:
                raise SecAggProtocolError(
                    f"UnmaskRequest: node {self._node_id} already answered a different "
                    f"survivor/dropped split in this round"
                )
            return self._answer

    def _check_split(self, req: UnmaskRequest, threshold: int) -> None:
        both = sorted(set(req.survivors) & set(req.dropped))
        if both:
            raise SecAggProtocolError(
                f"UnmaskRequest: nodes {both} listed as both survivor and dropped"
            )
        unknown = sorted((set(req.survivors) | set(req.dropped)) - set(self._held))
        if unknown:
            raise SecAggProtocolError(
                f"UnmaskRequest: this node holds no shares of nodes {unknown}"
            )
        if len(req.survivors) < threshold:
            raise SecAggProtocolError(
                f"UnmaskRequest: {len(req.survivors)} survivors claimed, threshold is {threshold}"
            )

    # -- persistence ----------------------------------------------------

    def to_state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue the round, as ``secagg.*`` numpy arrays.

        The arrays hold secrets (keys, seeds, shares): keep them on the device.
        The stochastic-rounding generator and the randomness source are not
        stored; :meth:`from_state` takes them again.
        """
        return encode(
            ClientSnapshot(
                node_id=self._node_id,
                stage=self._state,
                allow_minority_threshold=self._allow_minority,
                setup=self._setup,
                neighbours=self._neighbours,
                c_sk=None if self._c_key is None else self._c_key.private_bytes(),
                s_sk=None if self._s_key is None else self._s_key.private_bytes(),
                seed=self._seed,
                share_keys=dict(self._share_keys),
                mask_seeds=dict(self._mask_seeds),
                held=dict(self._held),
                answer=self._answer,
            )
        )

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, np.ndarray],
        *,
        trust: DeviceTrust,
        rng: np.random.Generator | None = None,
        randbytes: Callable[[int], bytes] | None = None,
    ) -> SecAggClient:
        """The client saved by :meth:`to_state`, at the same stage.

        Raises
        ------
        SecAggStateError
            Nothing is stored, or the stored arrays are inconsistent.
        """
        snap = decode(state)
        client = cls(
            node_id=snap.node_id,
            trust=trust,
            rng=rng,
            randbytes=randbytes,
            allow_minority_threshold=snap.allow_minority_threshold,
        )
        client._state = snap.stage
        client._setup = snap.setup
        if snap.setup is not None:
            client._setup_digest = setup_digest(snap.setup)
        client._neighbours = snap.neighbours
        try:
            client._c_key = None if snap.c_sk is None else KeyPair.from_private_bytes(snap.c_sk)
            client._s_key = None if snap.s_sk is None else KeyPair.from_private_bytes(snap.s_sk)
        except SecAggError as exc:
            raise SecAggStateError(f"device state: stored key pair is invalid: {exc}") from None
        client._seed = snap.seed
        client._share_keys = snap.share_keys
        client._mask_seeds = snap.mask_seeds
        client._held = snap.held
        client._answer = snap.answer
        if snap.answer is not None:
            client._answered = (snap.answer.survivors, snap.answer.dropped)
        return client
