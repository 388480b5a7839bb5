"""Secure aggregation over any message transport.

Server side, :func:`run_secagg_round` drives a :class:`SecAggServer` through
the four wire stages with an ``exchange(stage, payloads) -> replies``
callable: one payload dict per node goes out, the replies that arrived come
back (a missing node or a ``None`` reply counts as dropped). Client side,
:func:`handle_secagg` answers one stage from the device's state mapping alone,
so every stage may run in a different process.

Stages and payloads (the messages' ``to_dict`` forms)::

    stage               server -> device            device -> server
    MSG_SECAGG_SETUP    Setup                       AdvertiseKeys
    MSG_SECAGG_SHARE    PeerKeys                    ShareKeys
    MSG_SECAGG_MASK     RoutedShares                MaskedInput
    MSG_SECAGG_UNMASK   UnmaskRequest               UnmaskResponse

Every payload value is an ``int``, ``float``, ``str``, ``bytes``, ``bool``, a
list of one of those, or a numpy array (:func:`check_payload`).

Round ids must increase from one round to the next on a device (the server
round number, or an attempt counter within it): a device refuses any message
of a round older than, or equal to, one it already finished or abandoned, and
a message of a newer round discards an unfinished older one.

fedrec's update layout (:func:`quant_config_for`) is three segments in wire
order: ``item_factors`` (``n_items * dim``, clipped to ``[-clip, clip]``),
``item_bias`` (``n_items``, same clip) and ``counts`` (``n_items``, in
``[0, max_count]``, summed exactly). :func:`flatten_update` and
:func:`unflatten_sums` move between those segments and the arrays' natural
shapes. With ``n`` contributors each element of a sum is within ``n / scale``
of the exact sum of the clipped inputs (:mod:`fedrec.secagg.quantize`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from fedrec.secagg.client import SecAggClient
from fedrec.secagg.errors import (
    SecAggConfigError,
    SecAggError,
    SecAggMessageError,
    SecAggProtocolError,
)
from fedrec.secagg.messages import Message, RoutedShares, coerce
from fedrec.secagg.quantize import QuantConfig, SegmentSpec
from fedrec.secagg.server import AggregateResult, SecAggServer
from fedrec.secagg.state import (
    K_LAST_ROUND,
    PREFIX,
    DeviceState,
    SecAggStateError,
    clear_state,
    last_round,
    stored_round,
)
from fedrec.wire import (
    ARRAY_COUNTS,
    ARRAY_ITEM_BIAS,
    ARRAY_ITEM_FACTORS,
    MSG_SECAGG_MASK,
    MSG_SECAGG_SETUP,
    MSG_SECAGG_SHARE,
    MSG_SECAGG_UNMASK,
    UPDATE_SEGMENTS,
)

__all__ = [
    "WIRE_STAGES",
    "Exchange",
    "check_payload",
    "flatten_update",
    "handle_secagg",
    "quant_config_for",
    "resolve_threshold",
    "run_secagg_round",
    "unflatten_sums",
]

logger = logging.getLogger("fedrec.secagg.driver")

WIRE_STAGES = (MSG_SECAGG_SETUP, MSG_SECAGG_SHARE, MSG_SECAGG_MASK, MSG_SECAGG_UNMASK)
"""The wire message types of a round, in order."""

Exchange = Callable[[str, dict[int, dict[str, Any]]], Mapping[int, Mapping[str, Any] | None]]
"""``exchange(stage, {node: payload}) -> {node: reply or None}`` for the nodes that answered."""

_EXPECTED_CLIENT_STAGE = {
    MSG_SECAGG_SHARE: "advertised",
    MSG_SECAGG_MASK: "shared",
    MSG_SECAGG_UNMASK: "masked",
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


# -- server ------------------------------------------------------------------


def _degree(n: int, neighbours: int | str) -> int:
    if neighbours == "all":
        return n - 1
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise SecAggConfigError(f"neighbours must be 'all' or a positive int, got {neighbours!r}")
    return min(neighbours, n - 1)


def resolve_threshold(
    threshold: int | float,
    *,
    n_participants: int,
    neighbours: int | Literal["all"],
    allow_minority_threshold: bool = False,
) -> int:
    """The Shamir threshold ``t`` for a round.

    An ``int`` is returned as given (the server checks it). A ``float`` ``f``
    in ``(0, 1]`` is a fraction of each client's closed neighbourhood of
    ``k + 1`` nodes (all participants for the complete graph):
    ``t = ceil(f * (k + 1))``, raised to the majority ``k // 2 + 1`` unless
    ``allow_minority_threshold`` and capped at ``k``.
    """
    if isinstance(threshold, bool):
        raise SecAggConfigError(f"threshold must be an int or a float in (0, 1], got {threshold!r}")
    if isinstance(threshold, int):
        return threshold
    if not isinstance(threshold, float) or not (math.isfinite(threshold) and 0.0 < threshold <= 1.0):
        raise SecAggConfigError(f"threshold must be an int or a float in (0, 1], got {threshold!r}")
    if n_participants < 2:
        raise SecAggConfigError(f"need at least 2 participants, got {n_participants}")
    k = _degree(n_participants, neighbours)
    wanted = math.ceil(round(threshold * (k + 1), 9))
    floor = 1 if allow_minority_threshold else k // 2 + 1
    t = min(k, max(wanted, floor))
    if t != wanted:
        logger.info("threshold %.3f of %d nodes = %d, using t=%d (k=%d)", threshold, k + 1, wanted, t, k)
    return t


def _exchange(
    exchange: Exchange,
    server: SecAggServer,
    stage: str,
    outgoing: Mapping[int, Message],
) -> dict[int, Mapping[str, Any]]:
    forms: dict[int, dict[str, Any]] = {}
    payloads = {}
    for node, message in outgoing.items():
        if id(message) not in forms:
            forms[id(message)] = message.to_dict()
        payloads[node] = forms[id(message)]
    raw = exchange(stage, payloads)
    if not isinstance(raw, Mapping):
        raise SecAggMessageError(f"exchange for {stage} returned {type(raw).__name__}, not a mapping")
    replies = {node: reply for node, reply in raw.items() if reply is not None}
    errors = sorted(node for node, reply in raw.items() if reply is None)
    silent = len(set(payloads) - set(raw))
    logger.info(
        "round %d %s: %d sent, %d replied, %d error replies %s, %d silent",
        server.setup.round_id,
        stage,
        len(payloads),
        len(replies),
        len(errors),
        errors,
        silent,
    )
    return replies


def _collect(server: SecAggServer, stage: str, collect: Callable[[], Any]) -> Any:
    before = set(server.rejected)
    try:
        out = collect()
    except SecAggError:
        logger.error("round %d aborted at %s", server.setup.round_id, stage)
        raise
    finally:
        rejected = sorted(set(server.rejected) - before)
        if rejected:
            logger.info("round %d %s: rejected replies from nodes %s", server.setup.round_id, stage, rejected)
    survivors = out.n_contributors if isinstance(out, AggregateResult) else len(out)
    logger.info("round %d %s: %d survivors", server.setup.round_id, stage, survivors)
    return out


def run_secagg_round(
    exchange: Exchange,
    *,
    round_id: int,
    participants: Sequence[int],
    threshold: int | float,
    neighbours: int | Literal["all"],
    quant: QuantConfig,
    graph_seed: bytes | None = None,
    strict: bool = False,
    allow_minority_threshold: bool = False,
) -> AggregateResult:
    """Run one secure-aggregation round among ``participants`` through ``exchange``.

    Parameters
    ----------
    exchange:
        ``exchange(stage, {node: payload})`` sends each node its payload for
        ``stage`` (one of :data:`WIRE_STAGES`) and returns ``{node: reply}``
        for the replies that arrived; absent nodes and ``None`` replies
        (error replies) are dropouts.
    threshold:
        An int ``t``, or a fraction in ``(0, 1]`` (:func:`resolve_threshold`).
    neighbours, quant, graph_seed, strict, allow_minority_threshold:
        As for :class:`SecAggServer`.

    Raises
    ------
    SecAggAbort
        Fewer than ``t`` clients (or holders of a needed secret) remain.
    SecAggConfigError
        The settings cannot work.
    """
    t = resolve_threshold(
        threshold,
        n_participants=len(participants),
        neighbours=neighbours,
        allow_minority_threshold=allow_minority_threshold,
    )
    server = SecAggServer(
        round_id=round_id,
        participants=participants,
        threshold=t,
        neighbours=neighbours,
        quant=quant,
        graph_seed=graph_seed,
        strict=strict,
        allow_minority_threshold=allow_minority_threshold,
    )
    setup = server.setup
    logger.info(
        "round %d: secure aggregation of %d elements among %d participants, k=%d, t=%d, %d-bit ring",
        round_id,
        setup.quant.total_length,
        len(setup.participants),
        setup.k,
        t,
        setup.quant.bits,
    )
    adv = _exchange(exchange, server, MSG_SECAGG_SETUP, server.setup_messages())
    keys = _collect(server, MSG_SECAGG_SETUP, lambda: server.collect_keys(adv))
    shr = _exchange(exchange, server, MSG_SECAGG_SHARE, keys)
    routed = _collect(server, MSG_SECAGG_SHARE, lambda: server.collect_shares(shr))
    masked = _exchange(exchange, server, MSG_SECAGG_MASK, routed)
    requests = _collect(server, MSG_SECAGG_MASK, lambda: server.collect_masked(masked))
    answers = _exchange(exchange, server, MSG_SECAGG_UNMASK, requests)
    result: AggregateResult = _collect(server, MSG_SECAGG_UNMASK, lambda: server.collect_unmask(answers))
    return result


# -- client ------------------------------------------------------------------


def _payload_round(stage: str, payload: Mapping[str, Any]) -> int:
    if not isinstance(payload, Mapping):
        raise SecAggMessageError(f"{stage}: payload must be a mapping, got {type(payload).__name__}")
    value = payload.get("round_id")
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= int(value) <= _MAX_U64:
        raise SecAggMessageError(f"{stage}: payload has no valid 'round_id'")
    return int(value)


def _admit(state: DeviceState, stage: str, round_id: int, node_id: int) -> None:
    """Refuse stale or finished rounds; let a newer round discard an unfinished one."""
    last = last_round(state)
    active = stored_round(state)
    if stage == MSG_SECAGG_SETUP:
        if last is not None and round_id <= last:
            raise SecAggProtocolError(
                f"node {node_id}: setup of round {round_id} refused, round {last} already began here"
            )
        if active is not None:
            logger.info("node %d: round %d discards unfinished round %d", node_id, round_id, active)
        clear_state(state)
        return
    if active is not None and round_id > active:
        logger.info("node %d: %s of round %d discards unfinished round %d", node_id, stage, round_id, active)
        clear_state(state)
        active = None
    if active is None:
        if last is not None and round_id <= last:
            raise SecAggProtocolError(f"node {node_id}: {stage} of round {round_id} refused, that round is over")
        raise SecAggProtocolError(f"node {node_id}: {stage} of round {round_id} refused, no setup received")
    if round_id != active:
        raise SecAggProtocolError(
            f"node {node_id}: {stage} of round {round_id} refused, round {active} is in progress"
        )


def _save(state: DeviceState, client: SecAggClient) -> None:
    new = client.to_state()
    for key in [k for k in state if k.startswith(PREFIX) and k not in new and k != K_LAST_ROUND]:
        del state[key]
    state.update(new)


def _discard(state: DeviceState, node_id: int, exc: SecAggStateError) -> None:
    """Drop unreadable stored state, so one bad write cannot block every later round."""
    logger.warning("node %d: discarding unreadable secure-aggregation state: %s", node_id, exc)
    try:
        last_round(state)
    except SecAggStateError:
        clear_state(state, forget_round=True)
    else:
        clear_state(state)


def _restore(state: DeviceState, stage: str, node_id: int, **kwargs: Any) -> SecAggClient:
    try:
        client = SecAggClient.from_state(state, **kwargs)
    except SecAggStateError as exc:
        _discard(state, node_id, exc)
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
    segments: Callable[[], Mapping[str, np.ndarray]] | None = None,
    rng: np.random.Generator | None = None,
    randbytes: Callable[[int], bytes] | None = None,
    allow_minority_threshold: bool = False,
) -> dict[str, Any]:
    """Answer one stage of a round from the device state alone; returns the reply payload.

    The client is restored from ``state``, runs ``stage`` and is saved back.
    For :data:`~fedrec.wire.MSG_SECAGG_MASK` ``segments()`` is called, and
    only then, for the layout's 1-D float segments (:func:`flatten_update`).
    A refusal that ends the client's part in the round clears its state; a
    refused stale, repeated or out-of-order message leaves the state as it was.
    After the unmask answer the round's state is cleared. Stored state that
    cannot be read is discarded (a setup then starts the new round normally).

    ``rng`` (rounding coins) and ``randbytes`` (keys, seeds, nonces) default
    to OS randomness; simulations may inject seeded sources.

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
    if stage == MSG_SECAGG_MASK and segments is None:
        raise SecAggConfigError(f"{stage} needs a segments() callable")
    round_id = _payload_round(stage, payload)
    try:
        _admit(state, stage, round_id, node_id)
    except SecAggStateError as exc:
        _discard(state, node_id, exc)
        if stage != MSG_SECAGG_SETUP:
            raise
        _admit(state, stage, round_id, node_id)
    if stage == MSG_SECAGG_SETUP:
        state[K_LAST_ROUND] = np.array([round_id], dtype=np.uint64)
        client = SecAggClient(
            node_id=node_id, rng=rng, randbytes=randbytes, allow_minority_threshold=allow_minority_threshold
        )
    else:
        client = _restore(state, stage, node_id, rng=rng, randbytes=randbytes)
    message: Mapping[str, Any] | RoutedShares = payload
    if stage == MSG_SECAGG_MASK:
        try:
            message = _routed_for(payload, node_id)
        except SecAggError as exc:
            clear_state(state)
            logger.warning("node %d refused mask: %s", node_id, exc)
            raise
    try:
        reply = _run_stage(client, stage, message, segments)
    except SecAggError:
        if client.state == "aborted":
            clear_state(state)
        raise
    if client.state == "done":
        clear_state(state)
    else:
        _save(state, client)
    logger.debug("node %d answered %s of round %d", node_id, stage, round_id)
    return reply.to_dict()


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
) -> Message:
    if isinstance(message, RoutedShares):
        assert segments is not None
        return client.mask(message, dict(segments()))
    if stage == MSG_SECAGG_SETUP:
        return client.advertise(message)
    if stage == MSG_SECAGG_SHARE:
        return client.share(message)
    return client.unmask(message)


# -- fedrec update layout ------------------------------------------------------


def quant_config_for(
    *, n_items: int, dim: int, clip: float, bits: int, max_count: float, cohort: int
) -> QuantConfig:
    """The masked-vector layout of a fedrec update, scales resolved for ``cohort`` clients.

    Segments, in wire order: ``item_factors`` (``n_items * dim``, in
    ``[-clip, clip]``), ``item_bias`` (``n_items``, in ``[-clip, clip]``),
    ``counts`` (``n_items``, in ``[0, max_count]``). Scales are the largest
    powers of two the ring allows for ``cohort`` clients; the counts' scale
    must be at least 1 so integer counts are summed exactly. Use the result
    for any round of at most ``cohort`` participants.

    Raises
    ------
    SecAggConfigError
        A size or bound is invalid, or ``bits`` cannot hold ``cohort``
        clients' sum of counts exactly.
    """
    for name, value in (("n_items", n_items), ("dim", dim), ("cohort", cohort)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SecAggConfigError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise SecAggConfigError(f"clip must be a positive finite number, got {clip!r}")
    if not (isinstance(max_count, int | float) and math.isfinite(max_count) and max_count > 0):
        raise SecAggConfigError(f"max_count must be a positive finite number, got {max_count!r}")
    quant = QuantConfig(
        segments=(
            SegmentSpec.symmetric(ARRAY_ITEM_FACTORS, n_items * dim, clip=clip),
            SegmentSpec.symmetric(ARRAY_ITEM_BIAS, n_items, clip=clip),
            SegmentSpec(ARRAY_COUNTS, n_items, lo=0.0, hi=float(max_count)),
        ),
        bits=bits,
    ).resolve(cohort)
    counts = quant.segments[2]
    assert counts.scale is not None
    if counts.scale < 1:
        raise SecAggConfigError(
            f"bits={bits} cannot hold the exact sum of counts of {cohort} clients up to {max_count} "
            f"each ({cohort * max_count:.0f} >= the ring's capacity); use bits=64 or a smaller cohort"
        )
    return quant


def flatten_update(update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``item_factors (n_items, dim)``, ``item_bias (n_items,)``, ``counts (n_items,)`` -> 1-D segments.

    Raises
    ------
    SecAggMessageError
        A key is missing or unknown, or the shapes do not fit together.
    """
    missing = [k for k in UPDATE_SEGMENTS if k not in update]
    unknown = [k for k in update if k not in UPDATE_SEGMENTS]
    if missing or unknown:
        raise SecAggMessageError(f"update: missing {missing}, unknown {unknown}")
    factors = np.asarray(update[ARRAY_ITEM_FACTORS])
    bias = np.asarray(update[ARRAY_ITEM_BIAS])
    counts = np.asarray(update[ARRAY_COUNTS])
    if factors.ndim != 2:
        raise SecAggMessageError(f"update: item_factors must be (n_items, dim), got shape {factors.shape}")
    n_items = factors.shape[0]
    for name, arr in ((ARRAY_ITEM_BIAS, bias), (ARRAY_COUNTS, counts)):
        if arr.shape != (n_items,):
            raise SecAggMessageError(f"update: {name} must have shape ({n_items},), got {arr.shape}")
    return {ARRAY_ITEM_FACTORS: factors.reshape(-1), ARRAY_ITEM_BIAS: bias, ARRAY_COUNTS: counts}


def unflatten_sums(sums: Mapping[str, np.ndarray], *, n_items: int, dim: int) -> dict[str, np.ndarray]:
    """Segment sums (``AggregateResult.sums``) -> arrays of shapes ``(n_items, dim)``, ``(n_items,)``, ``(n_items,)``.

    Raises
    ------
    SecAggMessageError
        A segment is missing or has the wrong length.
    """
    missing = [k for k in UPDATE_SEGMENTS if k not in sums]
    if missing:
        raise SecAggMessageError(f"sums: missing segments {missing}")
    expected = {ARRAY_ITEM_FACTORS: n_items * dim, ARRAY_ITEM_BIAS: n_items, ARRAY_COUNTS: n_items}
    out = {}
    for name, length in expected.items():
        arr = np.asarray(sums[name])
        if arr.shape != (length,):
            raise SecAggMessageError(f"sums: {name} has shape {arr.shape}, expected ({length},)")
        out[name] = arr
    out[ARRAY_ITEM_FACTORS] = out[ARRAY_ITEM_FACTORS].reshape(n_items, dim)
    return out
