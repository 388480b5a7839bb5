"""Secure aggregation (SecAgg+) without transport: client and server state machines.

A round sums clients' float vectors so that the server learns only the sum of
the clients that finished, tolerating dropouts at every stage:

0. :class:`SecAggServer` publishes a :class:`Setup` (round id, participants,
   threshold ``t``, neighbourhood graph, quantization layout).
1. Each :class:`SecAggClient` answers :meth:`~SecAggClient.advertise` with two
   X25519 public keys (:class:`AdvertiseKeys`).
2. With its neighbours' keys (:class:`PeerKeys`) a client Shamir-shares its
   self-mask seed and mask private key, encrypted per neighbour
   (:class:`ShareKeys`); the server routes them (:class:`RoutedShares`).
3. A client sends its quantized input plus self mask plus pairwise masks
   (:class:`MaskedInput`).
4. Survivors reveal self-mask shares of survivors and key shares of dropped
   neighbours (:class:`UnmaskRequest` / :class:`UnmaskResponse`); the server
   removes all masks and returns :class:`AggregateResult`.

Every refusal raises a :class:`~fedrec.errors.SecAggError` sub-class; a round
left with fewer than ``t`` clients raises :class:`~fedrec.errors.SecAggAbort`.
:func:`run_round` drives a whole round in one process (tests, benchmarks).

Over a transport, :func:`run_secagg_round` drives the server through an
``exchange(stage, payloads)`` callable, a message round trip per stage, and
:class:`RoundPipeline` runs consecutive rounds in two trips each by sending
the next round's setup and share with the current round's mask and unmask
(:mod:`fedrec.secagg.rounds`). On a device :func:`handle_secagg` answers one
stage and :func:`handle_secagg_parts` every part of one message, from the
device's state mapping alone (:meth:`SecAggClient.to_state`,
:func:`clear_state`; up to two live rounds, each in its own namespace);
:func:`quant_config_for`, :func:`flatten_update` and :func:`unflatten_sums`
fit fedrec's update arrays to the masked vector.
"""

from __future__ import annotations

from fedrec.secagg.client import SecAggClient
from fedrec.secagg.driver import (
    WIRE_STAGES,
    PartReplies,
    check_payload,
    flatten_update,
    handle_secagg,
    handle_secagg_parts,
    quant_config_for,
    resolve_threshold,
    unflatten_sums,
)
from fedrec.secagg.errors import (
    SecAggAbort,
    SecAggConfigError,
    SecAggError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
)
from fedrec.secagg.graph import build_graph, neighbours_of
from fedrec.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    Message,
    PeerKeys,
    RoutedShares,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    payload_size,
)
from fedrec.secagg.quantize import QuantConfig, SegmentSpec
from fedrec.secagg.rounds import (
    Exchange,
    RoundDriver,
    RoundPipeline,
    RoundPlan,
    Trip,
    protocol_round_id,
    run_secagg_round,
    run_trip,
)
from fedrec.secagg.server import AggregateResult, SecAggServer
from fedrec.secagg.simulate import RoundTrace, build_cohort, run_round
from fedrec.secagg.state import SecAggStateError, clear_state

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "Exchange",
    "MaskedInput",
    "Message",
    "PartReplies",
    "PeerKeys",
    "QuantConfig",
    "RoundDriver",
    "RoundPipeline",
    "RoundPlan",
    "RoundTrace",
    "RoutedShares",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfigError",
    "SecAggError",
    "SecAggIntegrityError",
    "SecAggMessageError",
    "SecAggProtocolError",
    "SecAggServer",
    "SecAggStateError",
    "SegmentSpec",
    "Setup",
    "ShareKeys",
    "Trip",
    "UnmaskRequest",
    "UnmaskResponse",
    "WIRE_STAGES",
    "build_cohort",
    "build_graph",
    "check_payload",
    "clear_state",
    "flatten_update",
    "handle_secagg",
    "handle_secagg_parts",
    "neighbours_of",
    "payload_size",
    "protocol_round_id",
    "quant_config_for",
    "resolve_threshold",
    "run_round",
    "run_secagg_round",
    "run_trip",
    "unflatten_sums",
]
