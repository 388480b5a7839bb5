"""Secure aggregation (SecAgg+) against a server that may cheat, without Flower.

Which side each module is:

==========================  ==========  =====================================================
module                      side        what
==========================  ==========  =====================================================
``protocol_client``         device      one round's state machine (:class:`SecAggClient`),
                                        :class:`DeviceTrust` (identity, anchor, bound)
``device``                  device      transport adapter: answers a stage / the parts of one
                                        message from the device state (:func:`handle_secagg`)
``device_state``            device      the packed per-round state format
``protocol_server``         server      one round's state machine (:class:`SecAggServer`)
``schedule``                server      transport adapter: one round in four trips or two
                                        pipelined rounds per trip (:class:`RoundPipeline`)
``graph``                   both        the neighbourhood graph, its seed, and the policy:
                                        degree, threshold, security bound
``layout``                  both        fedrec's update as segments (+ extra segments),
                                        the downlink digest bound into the masks
``messages``                both        the wire messages and their one codec
``quantize``                both        fixed-point encoding into Z_2^bits
``crypto.*``                both        Shamir, X25519/HKDF/AES-GCM, ChaCha20, Ed25519
                                        identities and signed advertisements
``inprocess``               both        a whole round in one process (tests, benchmarks)
==========================  ==========  =====================================================

Every refusal raises a :class:`~fedrec.errors.SecAggError` sub-class (all in
:mod:`fedrec.errors`); a round left with fewer than ``t`` clients raises
:class:`~fedrec.errors.SecAggAbort`.
"""

from __future__ import annotations

from fedrec.errors import (
    SecAggAbort,
    SecAggConfigError,
    SecAggError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
    SecAggStateError,
)
from fedrec.secagg.device import (
    WIRE_STAGES,
    PartReplies,
    check_payload,
    handle_secagg,
    handle_secagg_parts,
)
from fedrec.secagg.device_state import clear_state
from fedrec.secagg.graph import (
    DEFAULT_SECURITY,
    SecurityParams,
    build_graph,
    neighbourhood_degree,
    neighbours_of,
    resolve_threshold,
    secure_degree,
)
from fedrec.secagg.inprocess import RoundTrace, aggregate_in_process, build_cohort
from fedrec.secagg.layout import (
    NO_MODEL,
    flatten_update,
    model_digest,
    quant_config_for,
    unflatten_sums,
    wrmf_segments,
)
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
from fedrec.secagg.protocol_client import DeviceTrust, SecAggClient
from fedrec.secagg.protocol_server import AggregateResult, SecAggServer
from fedrec.secagg.quantize import QuantConfig, SegmentSpec
from fedrec.secagg.schedule import (
    Exchange,
    RoundDriver,
    RoundPipeline,
    RoundPlan,
    Trip,
    aggregate_round_by_stage,
    protocol_round_id,
    send_trip,
)

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "DEFAULT_SECURITY",
    "DeviceTrust",
    "Exchange",
    "MaskedInput",
    "Message",
    "NO_MODEL",
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
    "SecurityParams",
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
    "model_digest",
    "neighbourhood_degree",
    "neighbours_of",
    "payload_size",
    "protocol_round_id",
    "quant_config_for",
    "resolve_threshold",
    "aggregate_in_process",
    "aggregate_round_by_stage",
    "send_trip",
    "secure_degree",
    "unflatten_sums",
    "wrmf_segments",
]
