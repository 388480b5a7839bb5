"""Evaluation through the secure sum (``secagg.enabled``): the server learns cohort totals only.

An evaluation is one stand-alone secure-aggregation round (four trips, not
pipelined) of type ``wire.MSG_SECAGG_EVAL`` over every connected device, with
the evaluation layout of :mod:`fedrec.metrics.secure_sum` and a threshold of
at least ``secagg.eval-min-cohort``: the server can only ever unmask the
metric sums and counts of that many devices or more. It reuses the training
rounds' protocol driver and trip (:class:`~.secagg.GridTrip`); only the
message type and the layout differ. A round that aborts (too few survivors)
yields no metrics for that round, never a partial, unmasked substitute.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.serverapp import Grid

from fedrec import wire
from fedrec.federated.server_state import ServerState
from fedrec.metrics.secure_sum import eval_layout, eval_totals
from fedrec.runconfig import RunConfig
from fedrec.secagg import RoundPipeline, RoundPlan, SecAggError, resolve_threshold

from .records import downlink_record, global_record, train_content
from .secagg import GridTrip, neighbours_for, threshold_for

log = logging.getLogger(__name__)


class EvalTrip(GridTrip):
    """A trip of an evaluation round: ``evaluate.secagg`` messages, the mask message carrying the table
    and, as a plain evaluation's downlink does, the public rating scale."""

    message_type = wire.MSG_SECAGG_EVAL

    def __init__(self, grid: Grid, cfg: RunConfig, state: ServerState, rnd: int, *,
                 rating_scale: tuple[float, float] | None) -> None:
        super().__init__(grid, cfg, state, rnd)
        self.rating_scale = rating_scale

    def _training_records(self) -> dict[str, Any]:
        glob = self.state.glob
        content = train_content(global_record(glob), downlink_record(
            self.cfg, round_=self.rnd, global_mean=glob.global_mean, rating_scale=self.rating_scale))
        return dict(content.items())


def eval_plan(cfg: RunConfig, state: ServerState, nodes: list[int], rnd: int, *,
              rating_scale: tuple[float, float] | None, authority_key: bytes | None = None) -> RoundPlan | None:
    """The evaluation round's plan, or None (logged) when the devices cannot meet the minimum cohort."""
    spec, n = cfg.secagg, len(nodes)
    minimum = spec.eval_min_cohort
    if n < max(2, minimum):
        log.warning("round %d: no secure evaluation, %d devices < secagg.eval-min-cohort = %d", rnd, n, minimum)
        return None
    neighbours = neighbours_for(spec, n)
    k = n - 1 if neighbours == "all" else int(neighbours)
    threshold = max(resolve_threshold(threshold_for(spec), n_participants=n, neighbours=neighbours,
                                      params=spec.security), minimum)
    if threshold > k:
        log.warning("round %d: no secure evaluation, threshold %d (secagg.eval-min-cohort) exceeds the %d "
                    "neighbours of each device", rnd, threshold, k)
        return None
    layout = eval_layout(kind=cfg.model.kind, rating_scale=rating_scale, users_per_client=cfg.data.users_per_client,
                         bits=spec.bits, cohort=n)
    return RoundPlan(number=rnd, participants=tuple(nodes), threshold=threshold, neighbours=neighbours, quant=layout,
                     security=spec.security, authority_key=authority_key)


def secure_evaluate(grid: Grid, cfg: RunConfig, state: ServerState, nodes: list[int], rnd: int, *,
                    rating_scale: tuple[float, float] | None, authority_key: bytes | None = None) -> dict[str, float]:
    """Every device evaluates; the secure sum returns the totals, turned into the cohort's metrics.

    ``eval_replies`` is the number of devices whose sums the secure sum counted
    (dropouts and refusals excluded); nothing, when the round aborted.

    ``authority_key``: as for :class:`~.secagg.SecureRounds` (devices that do not verify are dropped).
    """
    plan = eval_plan(cfg, state, nodes, rnd, rating_scale=rating_scale, authority_key=authority_key)
    if plan is None:
        return {}
    try:
        result = RoundPipeline().run(EvalTrip(grid, cfg, state, rnd, rating_scale=rating_scale), plan)
    except SecAggError as exc:
        log.error("round %d: secure evaluation aborted, no metrics this round: %s", rnd, exc)
        return {}
    metrics = eval_totals(result.sums).result()
    metrics["eval_replies"] = float(result.n_contributors)
    return metrics
