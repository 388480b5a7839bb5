"""Run a whole round in one process, with scripted dropouts and measurements.

Used by the tests, the core benchmark and anyone who wants to see the
protocol work without a transport: messages are handed over directly, a
client scheduled to drop simply stops answering, and a client that refuses a
message (raises :class:`SecAggError`) is treated like a dropout, as a real
server would see it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeVar

import numpy as np

from fedrec.errors import SecAggError
from fedrec.secagg.crypto.identity import SimulationAuthority
from fedrec.secagg.graph import DEFAULT_SECURITY, Neighbours, SecurityParams
from fedrec.secagg.messages import MaskedInput, Message, RoutedShares, payload_size
from fedrec.secagg.protocol_client import DeviceTrust, SecAggClient
from fedrec.secagg.protocol_server import AggregateResult, SecAggServer
from fedrec.secagg.quantize import QuantConfig

__all__ = ["STAGES", "RoundTrace", "Stage", "build_cohort", "aggregate_in_process"]

logger = logging.getLogger("fedrec.secagg.inprocess")

Stage = Literal["advertise", "share", "mask", "unmask"]
STAGES: tuple[Stage, ...] = ("advertise", "share", "mask", "unmask")
"""Client stages in order; a dropout at a stage means no reply from it on."""

_R = TypeVar("_R")
_In = TypeVar("_In", bound=Message)
_Out = TypeVar("_Out", bound=Message)


@dataclass
class RoundTrace:
    """Per-stage timings (seconds) and payload sizes (bytes) of a simulated round.

    ``client_seconds[stage][node]`` is the CPU time of one client call;
    ``server_seconds[stage]`` of one server call (stage ``unmask`` is the
    reconstruction and unmasking); ``up_bytes``/``down_bytes`` accumulate
    payload per node over the round.
    """

    client_seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    server_seconds: dict[str, float] = field(default_factory=dict)
    up_bytes: dict[int, int] = field(default_factory=dict)
    down_bytes: dict[int, int] = field(default_factory=dict)

    def _client(self, stage: str, node: int, seconds: float) -> None:
        self.client_seconds.setdefault(stage, {})[node] = seconds

    def _traffic(self, node: int, down: Message | None, up: Message | None) -> None:
        if down is not None:
            self.down_bytes[node] = self.down_bytes.get(node, 0) + payload_size(down)
        if up is not None:
            self.up_bytes[node] = self.up_bytes.get(node, 0) + payload_size(up)


def _timed(fn: Callable[[], _R]) -> tuple[_R, float]:
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def _client_stage(
    stage: Stage,
    inbox: Mapping[int, _In],
    call: Callable[[SecAggClient, _In], _Out],
    clients: Mapping[int, SecAggClient],
    dropouts: Mapping[int, Stage],
    trace: RoundTrace | None,
) -> dict[int, _Out]:
    replies: dict[int, _Out] = {}
    for node, message in inbox.items():
        if node in dropouts and STAGES.index(dropouts[node]) <= STAGES.index(stage):
            continue
        try:
            reply, seconds = _timed(partial(call, clients[node], message))
        except SecAggError as exc:
            logger.info("node %d refused at %s: %s", node, stage, exc)
            continue
        replies[node] = reply
        if trace is not None:
            trace._client(stage, node, seconds)
            trace._traffic(node, message, reply)
    return replies


def aggregate_in_process(
    server: SecAggServer,
    clients: Mapping[int, SecAggClient],
    inputs: Mapping[int, Mapping[str, np.ndarray]],
    *,
    dropouts: Mapping[int, Stage] | None = None,
    trace: RoundTrace | None = None,
    model_digests: Mapping[int, bytes] | None = None,
) -> AggregateResult:
    """Drive every stage of ``server``'s round with ``clients`` and return the result.

    Parameters
    ----------
    dropouts:
        ``node -> stage``: the node sends nothing from that stage on
        (``"advertise"`` = never joins, ``"unmask"`` = masked input sent but
        no shares revealed).
    model_digests:
        ``node -> digest of the downlink it trained on``; nodes not listed use
        :attr:`SecAggServer.model_digest` (what the server believes it sent).

    Raises
    ------
    SecAggAbort
        Fewer than ``t`` clients (or share holders) remain.
    """
    drops = dict(dropouts or {})

    def server_step(name: str, fn: Callable[[], _R]) -> _R:
        out, seconds = _timed(fn)
        if trace is not None:
            trace.server_seconds[name] = seconds
        return out

    setup = server.setup_messages()
    adv = _client_stage("advertise", setup, SecAggClient.advertise, clients, drops, trace)
    keys = server_step("advertise", lambda: server.collect_keys(adv))
    shr = _client_stage("share", keys, SecAggClient.share, clients, drops, trace)
    routed = server_step("share", lambda: server.collect_shares(shr))

    def mask(client: SecAggClient, message: RoutedShares) -> MaskedInput:
        digest = (model_digests or {}).get(client.node_id, server.model_digest)
        return client.mask(message, inputs[client.node_id], model_digest=digest)

    masked = _client_stage("mask", routed, mask, clients, drops, trace)
    requests = server_step("mask", lambda: server.collect_masked(masked))
    answers = _client_stage("unmask", requests, SecAggClient.unmask, clients, drops, trace)
    return server_step("unmask", lambda: server.collect_unmask(answers))


def build_cohort(
    *,
    round_id: int,
    participants: Sequence[int],
    threshold: int,
    neighbours: Neighbours,
    quant: QuantConfig,
    reproducible_seed: int | None = None,
    allow_minority_threshold: bool = False,
    strict: bool = False,
    security: SecurityParams | None = DEFAULT_SECURITY,
    authority: SimulationAuthority | None = None,
) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    """A server and one client per participant, ready for :func:`aggregate_in_process`.

    ``authority`` enrols the clients (identity = enrolment id = node id); a
    fresh one when omitted (seeded with ``reproducible_seed``). ``security``
    is the bound both the server's degree and every client hold to (``None``
    for small test graphs).

    With ``reproducible_seed`` every key, seed, nonce, graph and rounding coin
    comes from a seeded generator, so a simulated round replays exactly.
    That makes all secrets predictable: tests and simulations only.
    """

    def source(salt: int) -> Callable[[int], bytes] | None:
        if reproducible_seed is None:
            return None
        generator = np.random.default_rng([reproducible_seed, salt])
        return generator.bytes

    graph_source = source(0)
    if authority is None:
        secret_source = source(1 << 64)
        authority = SimulationAuthority(secret_source(32) if secret_source is not None else os.urandom(32))
    server = SecAggServer(
        round_id=round_id,
        participants=participants,
        threshold=threshold,
        neighbours=neighbours,
        quant=quant,
        graph_seed=None if graph_source is None else graph_source(32),
        strict=strict,
        allow_minority_threshold=allow_minority_threshold,
        security=security,
        authority_key=authority.public_key,
    )
    clients = {
        node: SecAggClient(
            node_id=node,
            trust=DeviceTrust(authority.identity(node), authority.public_key, security),
            rng=np.random.default_rng(
                None if reproducible_seed is None else [reproducible_seed, node]
            ),
            randbytes=source(node + 1),
            allow_minority_threshold=allow_minority_threshold,
        )
        for node in server.setup.participants
    }
    return server, clients
