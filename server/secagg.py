"""Server side of secure aggregation on the Message API (``secagg.enabled = true``).

A training round is one SecAgg+ round (:func:`fedrec.secagg.run_secagg_round`)
driven through four ``grid.send_and_receive`` calls, one per stage, with the
message types ``wire.MSG_SECAGG_*`` and ``group_id`` = the round number. Each
stage's payload dicts travel as a :class:`ConfigRecord` (scalars, lists,
bytes) under ``wire.RECORD_SECAGG`` plus an :class:`ArrayRecord` (the masked
vector) under ``wire.RECORD_SECAGG_ARRAYS``.

The mask-stage message also carries the global table and the round's
configuration: a device trains only once its neighbours' shares have been
routed to it, so a device that drops out earlier spends no work and no privacy
budget. The server only ever learns the sum of the survivors' clipped,
quantized updates.

Error replies and replies missing at the stage timeout are dropouts. When the
survivors fall below the threshold the round is aborted: it is logged, the
sums are zero with ``n_clients = 0`` (the model does not move) and the run
continues with the next round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedrec import wire
from fedrec.runconfig import RunConfig, SecAggSpec
from fedrec.secagg import (
    SecAggAbort,
    quant_config_for,
    run_secagg_round,
    unflatten_sums,
)
from fedrec.train.aggregate import RoundSums
from fedrec.train.federated import ServerState

from .records import config_record, global_record, metric_values, train_content

log = logging.getLogger(__name__)

Neighbours = int | Literal["all"]


def auto_degree(n: int) -> int:
    """SecAgg+'s neighbourhood size for ``n`` clients: ``2 * ceil(log2 n) + 1``.

    Client work and traffic grow with ``k`` instead of ``n``. The degree is
    lowered by one when both it and ``n`` are odd (no ``k``-regular graph
    exists then) and capped at ``n - 1`` (the complete graph).
    """
    k = 2 * math.ceil(math.log2(max(n, 2))) + 1
    return regular_degree(n, k)


def regular_degree(n: int, k: int) -> int:
    """``k`` made feasible for ``n`` nodes: at most ``n - 1``, even when ``n`` is odd."""
    k = min(k, n - 1)
    if k < n - 1 and k % 2 == 1 and n % 2 == 1:
        k -= 1
    return max(k, 1)


def neighbours_for(spec: SecAggSpec, n: int) -> Neighbours:
    """``secagg.neighbours`` for a cohort of ``n``: ``"all"``, ``"auto"`` or an int degree."""
    if spec.neighbours == "all":
        return "all"
    k = auto_degree(n) if spec.neighbours == "auto" else regular_degree(n, int(spec.neighbours))
    return "all" if k >= n - 1 else k


def threshold_for(spec: SecAggSpec) -> int | float:
    """``secagg.threshold``: a fraction of the neighbourhood in ``(0, 1]``, or an absolute ``t`` above 1."""
    t = spec.threshold
    return int(t) if t > 1 and float(t).is_integer() else float(t)


def secure_train_round(grid: Grid, cfg: RunConfig, state: ServerState, cohort: list[int],
                       rnd: int) -> tuple[RoundSums, list[int], list[dict[str, float]]]:
    """One training round whose updates the server only sees summed (SecAgg+).

    Returns the survivors' sums, the cohort members left out of the sum and the
    metrics of every device that trained this round (answered the mask stage).
    """
    n_items, dim = state.glob.n_items, state.glob.dim
    if len(cohort) < 2:
        log.error("round %d: secure aggregation aborted, the model is unchanged: a cohort of %d device(s) "
                  "cannot be aggregated securely", rnd, len(cohort))
        return zero_sums(n_items, dim), list(cohort), []
    quant = quant_config_for(n_items=n_items, dim=dim, clip=cfg.secagg.clip, bits=cfg.secagg.bits,
                             max_count=cfg.data.users_per_client, cohort=len(cohort))
    exchange = GridExchange(grid, cfg, state, rnd)
    try:
        result = run_secagg_round(exchange, round_id=rnd, participants=cohort, threshold=threshold_for(cfg.secagg),
                                  neighbours=neighbours_for(cfg.secagg, len(cohort)), quant=quant)
    except SecAggAbort as exc:
        log.error("round %d: secure aggregation aborted, the model is unchanged: %s", rnd, exc)
        return zero_sums(n_items, dim), list(cohort), exchange.device_metrics()
    sums = unflatten_sums(result.sums, n_items=n_items, dim=dim)
    if result.dropped:
        log.info("round %d: %d of %d devices left out of the secure sum", rnd, len(result.dropped), len(cohort))
    return (RoundSums(sums[wire.ARRAY_ITEM_FACTORS], sums[wire.ARRAY_ITEM_BIAS], sums[wire.ARRAY_COUNTS],
                      result.n_contributors), list(result.dropped), exchange.device_metrics())


def zero_sums(n_items: int, dim: int) -> RoundSums:
    """The sums of a round nobody contributed to: applying them leaves the table as it is."""
    return RoundSums(np.zeros((n_items, dim)), np.zeros(n_items), np.zeros(n_items), 0)


class GridExchange:
    """``exchange(stage, {node: payload}) -> {node: reply or None}`` over a Flower Grid.

    One ``send_and_receive`` per stage; ``None`` marks an error reply, a node
    without a reply before ``secagg.timeout`` is simply absent (the message's
    TTL is the same timeout, so a stage the server gave up on expires instead
    of running late on the device). The mask stage
    adds the global table and round configuration to every message and keeps
    the devices' plain metrics.
    """

    def __init__(self, grid: Grid, cfg: RunConfig, state: ServerState, rnd: int) -> None:
        self.grid, self.cfg, self.state, self.rnd = grid, cfg, state, rnd
        self.metrics: dict[int, dict[str, float]] = {}

    def __call__(self, stage: str, payloads: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any] | None]:
        records: dict[int, RecordDict] = {}
        shared = self._training_records() if stage == wire.MSG_SECAGG_MASK else {}
        messages = []
        for node, payload in payloads.items():
            if id(payload) not in records:
                records[id(payload)] = RecordDict({**shared, **payload_records(payload)})
            messages.append(Message(records[id(payload)], dst_node_id=node, message_type=stage,
                                    group_id=str(self.rnd), ttl=self.cfg.secagg.timeout))
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.secagg.timeout)
        out: dict[int, dict[str, Any] | None] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in payloads:
                continue
            if reply.has_error():
                log.warning("round %d %s: error reply from node %d: %s", self.rnd, stage, node, reply.error.reason)
                out[node] = None
                continue
            out[node] = reply_payload(reply)
            if stage == wire.MSG_SECAGG_MASK:
                self.metrics[node] = metric_values(reply)
        return out

    def _training_records(self) -> dict[str, Any]:
        glob = self.state.glob
        content = train_content(global_record(glob),
                                config_record(self.cfg.flat, round_=self.rnd, global_mean=glob.global_mean))
        return dict(content.items())

    def device_metrics(self) -> list[dict[str, float]]:
        """Plain metrics of the devices that answered the mask stage, i.e. trained this round."""
        return [self.metrics[node] for node in sorted(self.metrics)]


def payload_records(payload: Mapping[str, Any]) -> dict[str, ConfigRecord | ArrayRecord]:
    """A stage payload as records: arrays in an ArrayRecord, everything else in a ConfigRecord."""
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    out: dict[str, ConfigRecord | ArrayRecord] = {
        wire.RECORD_SECAGG: ConfigRecord({k: v for k, v in payload.items() if k not in arrays})}
    if arrays:
        out[wire.RECORD_SECAGG_ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return out


def reply_payload(reply: Message) -> dict[str, Any]:
    """A device's stage payload; a reply without one yields ``{}``, which the round rejects and logs."""
    config = reply.content.config_records.get(wire.RECORD_SECAGG)
    arrays = reply.content.array_records.get(wire.RECORD_SECAGG_ARRAYS)
    out: dict[str, Any] = dict(config.items()) if config is not None else {}
    if arrays is not None:
        out.update({k: v.numpy() for k, v in arrays.items()})
    return out
