"""Secure aggregation over any message transport: the DEVICE side (payload checks, admission, state).

:func:`handle_secagg` answers one stage of one round on a device from its
state mapping alone, so every stage may run in a different process;
:func:`handle_secagg_parts` answers every part of one message (with pipelined
rounds, one stage of each of two consecutive rounds), each part on its own. The
server side lives in :mod:`fedrec.secagg.schedule`.

Stages and payloads (the messages' ``to_dict`` forms)::

    stage               server -> device            device -> server
    SECAGG_SETUP        Setup                       AdvertiseKeys
    SECAGG_SHARE        PeerKeys                    ShareKeys
    SECAGG_MASK         RoutedShares                MaskedInput
    SECAGG_UNMASK       UnmaskRequest               UnmaskResponse

Every payload value is an ``int``, ``float``, ``str``, ``bytes``, ``bool``, a
list of one of those, or a numpy array (:func:`check_payload`).

Round ids must increase from one round to the next on a device (the server
derives them from its round number, :func:`fedrec.secagg.protocol_round_id`).
A device holds at most two live rounds (:mod:`fedrec.secagg.device_state`), each with
its own state and its own refusals:

* a setup of a round not newer than the latest one begun here is refused; a
  setup keeps only the newest live round besides the one it starts;
* any other message of a live round ``R``, once its stage is accepted,
  discards the live rounds older than ``R`` (with pipelining their last
  message came before it); a message of a round that is not live is refused:
  "that round is over" for an old or abandoned round, "no setup received"
  (discarding every live round) for a newer one.

fedrec's update layout lives in :mod:`fedrec.secagg.layout`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec.errors import (
    SecAggConfigError,
    SecAggError,
    SecAggMessageError,
    SecAggProtocolError,
    SecAggStateError,
)
from fedrec.secagg.device_state import (
    K_LAST_ROUND,
    DeviceState,
    clear_state,
    drop_round,
    last_round,
    live_rounds,
    load_round,
    store_round,
)
from fedrec.secagg.layout import NO_MODEL
from fedrec.secagg.messages import Message, RoutedShares, coerce
from fedrec.secagg.protocol_client import DeviceTrust, SecAggClient
from fedrec.wire import (
    SECAGG_MASK,
    SECAGG_SETUP,
    SECAGG_SHARE,
    SECAGG_STAGES,
    SECAGG_UNMASK,
)

__all__ = [
    "WIRE_STAGES",
    "PartReplies",
    "check_payload",
    "handle_secagg",
    "handle_secagg_parts",
]

logger = logging.getLogger("fedrec.secagg.device")

WIRE_STAGES = SECAGG_STAGES
"""The wire stages of a round, in order."""

_EXPECTED_CLIENT_STAGE = {
    SECAGG_SHARE: "advertised",
    SECAGG_MASK: "shared",
    SECAGG_UNMASK: "masked",
}
_MAX_U64 = (1 << 64) - 1
_SCALARS = (bool, int, float, str, bytes)


# -- payload checks ---------------------------------------------------------


def check_payload(payload: Mapping[str, Any]) -> None:
    """Refuse a payload a Flower record cannot hold.

    Keys are strings; values are ``int``, ``float``, ``str``, ``bytes``,
    ``bool``, a list whose items all have one of those types, or a numpy array.

    Raises
    ------
    SecAggMessageError
        Naming the first offending key.
    """
    if not isinstance(payload, Mapping):
        raise SecAggMessageError(f"payload must be a mapping, got {type(payload).__name__}")
    for key, value in payload.items():
        if not isinstance(key, str):
            raise SecAggMessageError(f"payload key {key!r} is not a string")
        if isinstance(value, np.ndarray) or type(value) in _SCALARS:
            continue
        if type(value) is list and len({type(v) for v in value}) <= 1:
            if not value or type(value[0]) in _SCALARS:
                continue
        raise SecAggMessageError(f"payload key {key!r}: {type(value).__name__} does not fit a record")


# -- client ------------------------------------------------------------------


def _payload_round(stage: str, payload: Mapping[str, Any]) -> int:
    if not isinstance(payload, Mapping):
        raise SecAggMessageError(f"{stage}: payload must be a mapping, got {type(payload).__name__}")
    value = payload.get("round_id")
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= int(value) <= _MAX_U64:
        raise SecAggMessageError(f"{stage}: payload has no valid 'round_id'")
    return int(value)


def _admit(state: DeviceState, stage: str, round_id: int, node_id: int) -> list[int]:
    """Refuse stale or finished rounds; return the live rounds to drop once the message is accepted.

    A setup drops at once every live round but the newest (the one a pipelined
    round runs alongside). A message of a round newer than any begun here
    drops every live round and is refused. A message of a live round drops
    the older live rounds only once its stage is accepted, so a refused
    message leaves the state as it was.
    """
    last = last_round(state)
    live = live_rounds(state)
    if stage == SECAGG_SETUP:
        if last is not None and round_id <= last:
            raise SecAggProtocolError(
                f"node {node_id}: setup of round {round_id} refused, round {last} already began here"
            )
        _discard_rounds(state, live[:-1] if live and live[-1] < round_id else live, stage, round_id, node_id)
        return []
    older = [r for r in live if r < round_id]
    if round_id in live:
        return older
    if last is not None and round_id <= last:
        raise SecAggProtocolError(f"node {node_id}: {stage} of round {round_id} refused, that round is over")
    _discard_rounds(state, older, stage, round_id, node_id)
    raise SecAggProtocolError(f"node {node_id}: {stage} of round {round_id} refused, no setup received")


def _discard_rounds(state: DeviceState, rounds: list[int], stage: str, round_id: int, node_id: int) -> None:
    for old in rounds:
        logger.info("node %d: %s of round %d discards unfinished round %d", node_id, stage, round_id, old)
        drop_round(state, old)


def _discard(state: DeviceState, node_id: int, exc: SecAggStateError, round_id: int | None = None) -> None:
    """Drop unreadable stored state, so one bad write cannot block every later round.

    An unreadable round loses only its own snapshot; an unreadable
    ``last_round`` takes every round with it.
    """
    logger.warning("node %d: discarding unreadable secure-aggregation state: %s", node_id, exc)
    try:
        last_round(state)
    except SecAggStateError:
        clear_state(state, forget_round=True)
        return
    if round_id is None:
        clear_state(state)
    else:
        drop_round(state, round_id)


def _restore(state: DeviceState, stage: str, round_id: int, node_id: int, **kwargs: Any) -> SecAggClient:
    try:
        client = SecAggClient.from_state(load_round(state, round_id), **kwargs)
    except SecAggStateError as exc:
        _discard(state, node_id, exc, round_id)
        raise
    if client.node_id != node_id:
        raise SecAggStateError(f"device state belongs to node {client.node_id}, not {node_id}")
    expected = _EXPECTED_CLIENT_STAGE[stage]
    if client.state != expected:
        raise SecAggProtocolError(
            f"node {node_id}: {stage} refused in state {client.state!r} (expected {expected!r})"
        )
    return client


def handle_secagg(
    stage: str,
    payload: Mapping[str, Any],
    state: DeviceState,
    *,
    node_id: int,
    trust: DeviceTrust,
    segments: Callable[[], Mapping[str, np.ndarray]] | None = None,
    model_digest: bytes = NO_MODEL,
    rng: np.random.Generator | None = None,
    randbytes: Callable[[int], bytes] | None = None,
    allow_minority_threshold: bool = False,
) -> dict[str, Any]:
    """Answer one stage of a round from the device state alone; returns the reply payload.

    The round's client is restored from its namespace in ``state``, runs
    ``stage`` and is saved back; other live rounds are left alone (except as
    the admission rules of this module say). For
    :data:`~fedrec.wire.SECAGG_MASK` ``segments()`` is called, and only then,
    for the layout's 1-D float segments (:func:`flatten_update`). A refusal
    that ends the client's part in the round drops that round's state; a
    refused stale, repeated or out-of-order message leaves the state as it
    was. After the unmask answer the round's state is dropped. Stored state
    that cannot be read is discarded (a setup then starts the new round
    normally).

    ``trust`` is the device's identity, trust anchor and security bound;
    ``model_digest`` the digest of the downlink the mask part trained on
    (:func:`fedrec.secagg.layout.model_digest`). ``rng`` (rounding coins) and
    ``randbytes`` (keys, seeds, nonces) default to OS randomness; simulations
    may inject seeded sources.

    Raises
    ------
    SecAggError
        A typed refusal: :class:`SecAggMessageError` for a malformed payload,
        :class:`SecAggProtocolError` for a message out of order or of another
        round, :class:`SecAggIntegrityError` for a failed authentication,
        :class:`SecAggConfigError` for round settings this device refuses.
    """
    if stage not in WIRE_STAGES:
        raise SecAggMessageError(f"unknown secure-aggregation stage {stage!r}")
    if stage == SECAGG_MASK and segments is None:
        raise SecAggConfigError(f"{stage} needs a segments() callable")
    round_id = _payload_round(stage, payload)
    try:
        older = _admit(state, stage, round_id, node_id)
    except SecAggStateError as exc:
        _discard(state, node_id, exc)
        if stage != SECAGG_SETUP:
            raise
        older = _admit(state, stage, round_id, node_id)
    if stage == SECAGG_SETUP:
        state[K_LAST_ROUND] = np.array([round_id], dtype=np.uint64)
        client = SecAggClient(
            node_id=node_id, trust=trust, rng=rng, randbytes=randbytes,
            allow_minority_threshold=allow_minority_threshold,
        )
    else:
        client = _restore(state, stage, round_id, node_id, trust=trust, rng=rng, randbytes=randbytes)
        _discard_rounds(state, older, stage, round_id, node_id)
    message: Mapping[str, Any] | RoutedShares = payload
    if stage == SECAGG_MASK:
        try:
            message = _routed_for(payload, node_id)
        except SecAggError as exc:
            drop_round(state, round_id)
            logger.warning("node %d refused mask: %s", node_id, exc)
            raise
    try:
        reply = _run_stage(client, stage, message, segments, model_digest)
    except SecAggError:
        if client.state == "aborted":
            drop_round(state, round_id)
        raise
    if client.state == "done":
        drop_round(state, round_id)
    else:
        store_round(state, round_id, client.to_state())
    logger.debug("node %d answered %s of round %d", node_id, stage, round_id)
    return reply.to_dict()


@dataclass
class PartReplies:
    """The answer to one message's parts: ``replies[stage]`` for the parts answered,
    ``errors[stage]`` (the refusal, as text) for the others."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def handle_secagg_parts(
    parts: Mapping[str, Mapping[str, Any]],
    state: DeviceState,
    *,
    node_id: int,
    trust: DeviceTrust,
    segments: Callable[[], Mapping[str, np.ndarray]] | None = None,
    model_digest: bytes = NO_MODEL,
    rng: np.random.Generator | None = None,
    randbytes: Callable[[int], bytes] | None = None,
    allow_minority_threshold: bool = False,
) -> PartReplies:
    """Answer every part of one message (``{stage: payload}``), each on its own.

    Parts run oldest round first, so the current round's mask or unmask
    comes before the next round's setup or share, as on the server. A part
    that raises (a typed refusal, or anything else, e.g. failed training)
    becomes an error entry and is logged; the other parts are answered all
    the same, so the server drops this device from that part's round only.
    The arguments are those of :func:`handle_secagg`.

    Raises
    ------
    SecAggMessageError
        ``parts`` is empty or names an unknown stage (nothing is answered).
    """
    if not parts:
        raise SecAggMessageError("a secure-aggregation message must hold at least one part")
    unknown = sorted(set(parts) - set(WIRE_STAGES))
    if unknown:
        raise SecAggMessageError(f"unknown secure-aggregation parts {unknown}")
    out = PartReplies()
    for stage in sorted(parts, key=lambda s: (_round_or_none(parts[s]), WIRE_STAGES.index(s))):
        try:
            out.replies[stage] = handle_secagg(
                stage,
                parts[stage],
                state,
                node_id=node_id,
                trust=trust,
                segments=segments,
                model_digest=model_digest,
                rng=rng,
                randbytes=randbytes,
                allow_minority_threshold=allow_minority_threshold,
            )
        except SecAggError as exc:
            out.errors[stage] = str(exc)
            logger.warning("node %d refused the %s part: %s", node_id, stage, exc)
        except Exception as exc:  # one failing part must not cost the other part its answer
            out.errors[stage] = f"{type(exc).__name__}: {exc}"
            logger.warning("node %d failed the %s part: %s", node_id, stage, type(exc).__name__)
    return out


def _round_or_none(payload: Mapping[str, Any]) -> int:
    """Sort key: a part's round id, or -1 when it has none (it is refused first, touching nothing)."""
    value = payload.get("round_id") if isinstance(payload, Mapping) else None
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else -1


def _routed_for(payload: Mapping[str, Any], node_id: int) -> RoutedShares:
    routed = coerce(RoutedShares, payload)
    if routed.node_id != node_id:
        raise SecAggMessageError(f"RoutedShares: addressed to node {routed.node_id}, not {node_id}")
    return routed


def _run_stage(
    client: SecAggClient,
    stage: str,
    message: Mapping[str, Any] | RoutedShares,
    segments: Callable[[], Mapping[str, np.ndarray]] | None,
    model_digest: bytes,
) -> Message:
    if isinstance(message, RoutedShares):
        assert segments is not None
        return client.mask(message, dict(segments()), model_digest=model_digest)
    if stage == SECAGG_SETUP:
        return client.advertise(message)
    if stage == SECAGG_SHARE:
        return client.share(message)
    return client.unmask(message)
