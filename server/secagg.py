"""Server side of secure aggregation on the Message API (``secagg.enabled = true``).

A training round is one SecAgg+ round (:mod:`fedrec.secagg.schedule`) whose
stages travel in ``wire.MSG_SECAGG`` messages, one per device and trip, with
``group_id`` = the round number. Each message holds one part per stage
addressed to the device: the part's payload as a :class:`ConfigRecord`
(scalars, lists, bytes) under ``wire.secagg_record(stage)`` plus an
:class:`ArrayRecord` (the masked vector) under ``wire.secagg_arrays_record(stage)``.

With ``secagg.pipeline = true`` (default) the cohort of the next round is
drawn before this round's mask stage and its setup and share stages ride in
this round's mask and unmask trips (:class:`fedrec.secagg.RoundPipeline`): a
steady-state round costs two ``grid.send_and_receive`` calls instead of four.
A device in both cohorts gets one message with both parts; a device in one
cohort only, a message with its part only.

A message with a mask part also carries the global table and the round's
configuration: a device trains only once its neighbours' shares have been
routed to it, so a device that drops out earlier spends no work and no privacy
budget. The server only ever learns the sum of the survivors' clipped,
quantized updates.

Error replies, per-part error records and replies missing at the stage timeout
are dropouts of the rounds whose parts they concern. When the survivors fall
below the threshold the round is aborted: it is logged, the sums are zero with
``n_clients = 0`` (the model does not move) and the run continues with the
next round. A pre-started round whose setup or share aborted is simply run
again, with its own setup and share trips, when its turn comes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedrec import wire
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig, SecAggSpec
from fedrec.secagg import (
    RoundPipeline,
    RoundPlan,
    SecAggError,
    SegmentSpec,
    model_digest,
    neighbourhood_degree,
    quant_config_for,
    unflatten_sums,
    wrmf_segments,
)
from fedrec.train.aggregate import RoundSums

from .records import downlink_record, global_record, metric_values, train_content

log = logging.getLogger(__name__)

Neighbours = int | Literal["all"]
TrainResult = tuple[RoundSums, list[int], list[dict[str, float]]]


def neighbours_for(spec: SecAggSpec, n: int) -> Neighbours:
    """The degree ``k`` of a cohort of ``n`` for ``secagg.neighbours`` (``"all"`` for the complete graph).

    :func:`fedrec.secagg.neighbourhood_degree` decides under the run's
    security parameters (``secagg.sigma``, ``eta``, ``corrupt``, ``dropout``):
    ``auto`` is the bound, and an int below it is raised to it.
    """
    setting: int | Literal["all", "auto"] = (
        spec.neighbours if spec.neighbours in ("all", "auto") else int(spec.neighbours))  # type: ignore[assignment]
    k = neighbourhood_degree(n, setting, params=spec.security)
    return "all" if k >= n - 1 else k


def threshold_for(spec: SecAggSpec) -> int | float:
    """``secagg.threshold``: a fraction of the neighbourhood in ``(0, 1]``, or an absolute ``t`` above 1."""
    t = spec.threshold
    return int(t) if t > 1 and float(t).is_integer() else float(t)


def secure_train_round(grid: Grid, cfg: RunConfig, state: ServerState, cohort: list[int],
                       rnd: int, *, authority_key: bytes | None = None) -> TrainResult:
    """One stand-alone training round (four trips) whose updates the server only sees summed (SecAgg+).

    Returns the survivors' sums, the cohort members left out of the sum and the
    metrics of every device that trained this round (answered the mask stage).
    """
    return SecureRounds(grid, cfg, authority_key=authority_key).train(state, cohort, rnd)


class SecureRounds:
    """The secure training rounds of one run; each may pre-start the next one in its trips.

    Parameters
    ----------
    grid
        The Flower Grid the messages go through.
    cfg
        The run configuration (``secagg.*``, the round settings devices receive).
    authority_key
        The enrolment authority's public key (32 bytes), when the server has
        it: advertisements and certificates that do not verify under it are
        dropped (logged as rejected, a dropout of that round) before any
        device sees them. ``None``: only the devices check them.
    """

    def __init__(self, grid: Grid, cfg: RunConfig, *, authority_key: bytes | None = None) -> None:
        self.grid, self.cfg = grid, cfg
        self.authority_key = authority_key
        self.pipeline = RoundPipeline()

    def train(self, state: ServerState, cohort: list[int], rnd: int, *,
              next_cohort: list[int] | None = None) -> TrainResult:
        """Round ``rnd`` among ``cohort``; with ``next_cohort``, round ``rnd + 1``'s setup and share ride along.

        Returns the survivors' sums, the cohort members left out of the sum and
        the metrics of every device that trained this round.
        """
        n_items, dim = state.glob.n_items, state.glob.dim
        plan = self.plan(state, cohort, rnd)
        upcoming = None if next_cohort is None else self.plan(state, next_cohort, rnd + 1, quiet=True)
        if plan is None:
            log.error("round %d: secure aggregation aborted, the model is unchanged: a cohort of %d device(s) "
                      "cannot be aggregated securely", rnd, len(cohort))
            return zero_sums(n_items, dim, self.extra_segments(state)), list(cohort), []
        trip = GridTrip(self.grid, self.cfg, state, rnd)
        try:
            result = self.pipeline.run(trip, plan, next_plan=upcoming, model_digest=trip.model_digest())
        except SecAggError as exc:  # too few survivors, or a sum the checks refused (inconsistent share, masks)
            log.error("round %d: secure aggregation aborted, the model is unchanged: %s", rnd, exc)
            return zero_sums(n_items, dim, self.extra_segments(state)), list(cohort), trip.device_metrics()
        sums = unflatten_sums(result.sums, n_items=n_items, dim=dim)
        if result.dropped:
            log.info("round %d: %d of %d devices left out of the secure sum", rnd, len(result.dropped), len(cohort))
        extra = {spec.name: np.asarray(sums[spec.name], np.float64) for spec in self.extra_segments(state)}
        return (RoundSums(sums[wire.ARRAY_ITEM_FACTORS], sums[wire.ARRAY_ITEM_BIAS], sums[wire.ARRAY_COUNTS],
                          result.n_contributors, extra), list(result.dropped), trip.device_metrics())

    def plan(self, state: ServerState, cohort: list[int], rnd: int, *, quiet: bool = False) -> RoundPlan | None:
        """Round ``rnd``'s settings for ``cohort``, or ``None`` when fewer than two devices cannot be aggregated."""
        if len(cohort) < 2:
            if quiet:
                log.info("round %d: a cohort of %d device(s) is not pre-started", rnd, len(cohort))
            return None
        spec = self.cfg.secagg
        quant = quant_config_for(n_items=state.glob.n_items, dim=state.glob.dim, clip=spec.clip, bits=spec.bits,
                                 max_count=self.cfg.data.users_per_client, cohort=len(cohort),
                                 extra=self.extra_segments(state))
        return RoundPlan(number=rnd, participants=tuple(cohort), threshold=threshold_for(spec),
                         neighbours=neighbours_for(spec, len(cohort)), quant=quant, security=spec.security,
                         authority_key=self.authority_key)

    def extra_segments(self, state: ServerState) -> tuple[SegmentSpec, ...]:
        """The model's segments after the fixed three (``"wrmf"``: ``p p^T`` and the curvature), same clip."""
        if state.wrmf_reg is None:
            return ()
        return wrmf_segments(n_items=state.glob.n_items, dim=state.glob.dim, clip=self.cfg.secagg.clip)

    def close(self) -> None:
        """The run is over: forget a pre-started round (devices drop its state with their next round)."""
        self.pipeline.abandon()


def zero_sums(n_items: int, dim: int, extra: Sequence[SegmentSpec] = ()) -> RoundSums:
    """The sums of a round nobody contributed to (``extra``: the model's further segments, zero too).

    Applying them leaves the table as it is; under user-level DP the noise the
    server adds to them is the round's released output.
    """
    return RoundSums(np.zeros((n_items, dim)), np.zeros(n_items), np.zeros(n_items), 0,
                     {spec.name: np.zeros(spec.length) for spec in extra})


class GridTrip:
    """``trip({stage: {node: payload}}) -> {stage: {node: reply or None}}`` over a Flower Grid.

    One ``send_and_receive`` per trip, one message per node holding every part
    addressed to it. ``None`` marks a part the node refused (its error record)
    or a whole error reply; a node without a reply before ``secagg.timeout``
    is simply absent (the message's TTL is the same timeout, so a trip the
    server gave up on expires instead of running late on the device). A
    message with a mask part adds the global table and round configuration,
    and the reply's plain metrics are kept.
    """

    #: The messages' type (an evaluation round through the secure sum uses ``wire.MSG_SECAGG_EVAL``).
    message_type = wire.MSG_SECAGG

    def __init__(self, grid: Grid, cfg: RunConfig, state: ServerState, rnd: int) -> None:
        self.grid, self.cfg, self.state, self.rnd = grid, cfg, state, rnd
        self.metrics: dict[int, dict[str, float]] = {}
        self._training: dict[str, Any] | None = None

    def __call__(self, parts: Mapping[str, dict[int, dict[str, Any]]]) -> dict[str, dict[int, dict[str, Any] | None]]:
        addressed: dict[int, list[str]] = {}
        for stage, payloads in parts.items():
            for node in payloads:
                addressed.setdefault(node, []).append(stage)
        messages = self._messages(parts, addressed)
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.secagg.timeout)
        out: dict[str, dict[int, dict[str, Any] | None]] = {stage: {} for stage in parts}
        for reply in replies:
            node = reply.metadata.src_node_id
            records = {} if reply.has_error() else dict(reply.content.items())
            for stage in addressed.get(node, []):
                out[stage][node] = self._part(reply, records, stage)
            if wire.SECAGG_MASK in addressed.get(node, []) and out[wire.SECAGG_MASK][node] is not None:
                self.metrics[node] = metric_values(reply)
        return out

    def _messages(self, parts: Mapping[str, dict[int, dict[str, Any]]],
                  addressed: Mapping[int, list[str]]) -> list[Message]:
        training = self._training_records() if wire.SECAGG_MASK in parts else {}
        records: dict[int, dict[str, ConfigRecord | ArrayRecord]] = {}
        messages = []
        for node, stages in addressed.items():
            content: dict[str, Any] = {}
            for stage in stages:
                payload = parts[stage][node]
                if id(payload) not in records:
                    records[id(payload)] = part_records(stage, payload)
                content.update(records[id(payload)])
                if stage == wire.SECAGG_MASK:
                    content.update(training)
            messages.append(Message(RecordDict(content), dst_node_id=node, message_type=self.message_type,
                                    group_id=str(self.rnd), ttl=self.cfg.secagg.timeout))
        return messages

    def _part(self, reply: Message, records: Mapping[str, Any], stage: str) -> dict[str, Any] | None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("round %d %s: error reply from node %d: %s", self.rnd, stage, node, reply.error.reason)
            return None
        error = records.get(wire.secagg_error_record(stage))
        if isinstance(error, ConfigRecord):
            log.warning("round %d %s: node %d refused its part: %s", self.rnd, stage, node,
                        error.get(wire.SECAGG_REASON, "no reason given"))
            return None
        return part_payload(records, stage)

    def _training_records(self) -> dict[str, Any]:
        if self._training is None:
            glob = self.state.glob
            content = train_content(global_record(glob, self.cfg.downlink),
                                    downlink_record(self.cfg, round_=self.rnd, global_mean=glob.global_mean))
            self._training = dict(content.items())
        return self._training

    def model_digest(self) -> bytes:
        """The digest of the downlink every mask part of this round carries (devices bind it into their masks)."""
        return downlink_digest(self._training_records())

    def device_metrics(self) -> list[dict[str, float]]:
        """Plain metrics of the devices that answered the mask stage, i.e. trained this round."""
        return [self.metrics[node] for node in sorted(self.metrics)]


def part_records(stage: str, payload: Mapping[str, Any]) -> dict[str, ConfigRecord | ArrayRecord]:
    """One part's payload as records: arrays in an ArrayRecord, everything else in a ConfigRecord."""
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    out: dict[str, ConfigRecord | ArrayRecord] = {
        wire.secagg_record(stage): ConfigRecord({k: v for k, v in payload.items() if k not in arrays})}
    if arrays:
        out[wire.secagg_arrays_record(stage)] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return out


def part_payload(records: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """A device's answer to one part, from its reply's records; without it ``{}``, which the round rejects and logs."""
    config = records.get(wire.secagg_record(stage))
    arrays = records.get(wire.secagg_arrays_record(stage))
    out: dict[str, Any] = dict(config.items()) if isinstance(config, ConfigRecord) else {}
    if isinstance(arrays, ArrayRecord):
        out.update({k: wire.npy_array(v.data) for k, v in arrays.items()})
    return out


def downlink_digest(records: Mapping[str, Any]) -> bytes:
    """:func:`fedrec.secagg.model_digest` of a downlink's table and round configuration records.

    ``client.secagg`` computes the same from the records it receives.
    """
    table = records.get(wire.RECORD_GLOBAL)
    config = records.get(wire.RECORD_CONFIG)
    arrays = {k: wire.npy_array(v.data) for k, v in table.items()} if isinstance(table, ArrayRecord) else {}
    values = dict(config.items()) if isinstance(config, ConfigRecord) else {}
    return model_digest(arrays, values)
