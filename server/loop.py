"""The server's round loop over Flower's Grid: sample, send, aggregate, checkpoint, evaluate.

All math is in :mod:`fedrec.federated` (``ServerState``, the privacy policy);
this module only moves messages. A device that raises, times out or sends a
malformed reply is a dropout: the round aggregates the survivors and the
dropouts are logged and counted in the round's metrics.

With pipelined secure aggregation (``secagg.pipeline``) the cohort of round
``r + 1`` is drawn, through the same privacy policy call, just before round
``r`` trains, so that round ``r + 1``'s setup and share can travel with round
``r``'s mask and unmask. If the run stops before round ``r + 1`` (the privacy
budget), that pre-started round is abandoned; the last round pre-starts none.
Under user-level DP the server's generator then draws round ``r + 1``'s Poisson
cohort before round ``r``'s noise, so a pipelined run's cohorts and noise are
other (identically distributed) draws than the reference loop's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedrec import wire
from fedrec.errors import CheckpointError, ConfigError, FedRecError
from fedrec.federated.policy import ServerPolicy, server_policy
from fedrec.federated.server_state import ServerState, prior_mean, sample_eval_cohort
from fedrec.metrics.core import MetricSums
from fedrec.runconfig import RunConfig
from fedrec.store.atomic import atomic_write_text
from fedrec.store.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from fedrec.store.device_table import DEVICE_STATE_FILE, sync_table
from fedrec.train.aggregate import RoundSums

from .records import downlink_record, global_record, metric_values, train_content, update_arrays
from .secagg import SecureRounds
from .secure_eval import secure_evaluate

log = logging.getLogger("flwr.fedrec")  # a child of Flower's logger: round lines reach `flwr log`

RoundCallback = Callable[[dict[str, Any]], None]
CHECKPOINT = CHECKPOINT_FILE
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Catalogue:
    """Public facts the server needs: catalogue size and rating scale (no user data)."""

    n_items: int
    rating_scale: tuple[float, float] | None


@dataclass
class RunResult:
    """What a finished run hands back to the caller (the simulation runner)."""

    state: ServerState
    history: list[dict[str, Any]] = field(default_factory=list)


def train_over_grid(grid: Grid, cfg: RunConfig, catalogue: Catalogue, *, run_dir: Path | None = None,
                    on_round: RoundCallback | None = None, resume: bool = False,
                    authority_key: bytes | None = None) -> RunResult:
    """Run all rounds of ``cfg`` on the devices reachable through ``grid``.

    ``authority_key`` (the enrolment authority's public key, when the server
    has it) makes the server verify every secure round's advertisements too
    and drop the devices whose advertisement does not verify (:class:`.secagg.SecureRounds`).
    """
    nodes = wait_for_nodes(grid, cfg.min_clients, timeout=cfg.round_timeout)
    size = cfg.fed.cohort_size(len(nodes))
    cfg = cfg.for_population(len(nodes))  # its t_min (distributed noise) and digest ride in every downlink
    privacy = server_policy(cfg.privacy_plan(), population=len(nodes))
    state = _initial_state(cfg, catalogue, run_dir, resume, privacy)
    result = RunResult(state)
    secure = SecureRounds(grid, cfg, authority_key=authority_key) if cfg.secagg.enabled else None
    pipelined = secure is not None and cfg.secagg.pipeline
    next_cohort: list[int] | None = None
    while state.round < cfg.fed.rounds:
        if not privacy.allows_next_round():
            log.warning("stopping before round %d: the privacy budget dp.epsilon would be exceeded", state.round + 1)
            break
        rnd = state.round + 1
        start = time.perf_counter()
        cohort = next_cohort if next_cohort is not None else privacy.cohort(nodes, size, state.rng)
        next_cohort = privacy.cohort(nodes, size, state.rng) if pipelined and rnd < cfg.fed.rounds else None
        if secure is not None:
            sums, dropped, device_metrics = secure.train(state, cohort, rnd, next_cohort=next_cohort)
        else:
            sums, dropped, device_metrics = _train_round(grid, cfg, state, cohort, rnd)
        applied = time.perf_counter()
        sums, expected = privacy.finish_round(sums, state.rng)
        state.apply(sums, expected_clients=expected)
        done = time.perf_counter()
        row: dict[str, Any] = {"round": rnd, "sampled": len(cohort), "survivors": sums.n_clients,
                               "dropouts": len(dropped), "train_seconds": done - start,
                               "aggregate_seconds": done - applied,
                               **privacy.report(device_metrics)}
        if rnd % cfg.fed.eval_every == 0 or rnd == cfg.fed.rounds:
            row.update(evaluate_round(grid, cfg, state, nodes, rnd, rating_scale=catalogue.rating_scale,
                                      authority_key=authority_key))
        _record(run_dir, state, cfg, row, privacy.state_dict(), start)
        result.history.append(row)
        if on_round:
            on_round(row)
    if secure is not None:
        secure.close()
    return result


def wait_for_nodes(grid: Grid, minimum: int, *, timeout: float) -> list[int]:
    """Node ids once at least ``minimum`` are connected (simulation registers them at start).

    The poll backs off to 5 s: listing a million nodes takes the link state's lock for
    a while, and polling it every half second would slow the registration it waits for.
    """
    deadline = time.monotonic() + timeout
    pause = 0.5
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(f"min-clients: only {len(nodes)} devices connected within {timeout:.0f}s")
        time.sleep(pause)
        pause = min(2 * pause, 5.0)


def _initial_state(cfg: RunConfig, catalogue: Catalogue, run_dir: Path | None, resume: bool,
                   privacy: ServerPolicy) -> ServerState:
    if resume:
        if run_dir is None:
            raise CheckpointError("resume: no run folder given")
        state, extra = load_checkpoint(run_dir / CHECKPOINT, n_items=catalogue.n_items, dim=cfg.model.dim)
        privacy.load_state_dict(extra.get("privacy", {}))
        state.set_model(cfg.model)
        log.info("resuming from round %d", state.round)
        return state
    mu = prior_mean(cfg.model.kind, catalogue.rating_scale)
    return ServerState.start(catalogue.n_items, cfg.model, cfg.fed, global_mean=mu)


def _train_round(grid: Grid, cfg: RunConfig, state: ServerState, cohort: list[int],
                 rnd: int) -> tuple[RoundSums, list[int], list[dict[str, float]]]:
    content = train_content(global_record(state.glob, cfg.downlink),
                            downlink_record(cfg, round_=rnd, global_mean=state.glob.global_mean))
    replies = _send(grid, content, wire.MSG_TRAIN, cohort, rnd, cfg.round_timeout)
    n_items, dim = state.glob.n_items, state.glob.dim
    sums = [np.zeros((n_items, dim), np.float64), np.zeros(n_items, np.float64), np.zeros(n_items, np.float64)]
    wrmf = state.wrmf_reg is not None
    extra = {name: np.zeros(length) for name, length in wire.wrmf_segment_lengths(n_items, dim).items()} if wrmf else {}
    survivors, dropped, device_metrics = 0, [], []
    for node in cohort:
        reply = replies.get(node)
        try:
            arrays = _checked(reply, node, n_items, dim, wrmf=wrmf)
        except FedRecError as exc:
            log.warning("round %d: dropout of node %d: %s", rnd, node, exc)
            dropped.append(node)
            continue
        sums[0] += arrays[wire.ARRAY_ITEM_FACTORS]
        sums[1] += arrays[wire.ARRAY_ITEM_BIAS]
        sums[2] += arrays[wire.ARRAY_COUNTS]
        for name, total in extra.items():
            total += arrays[name]
        device_metrics.append(metric_values(replies[node]))
        survivors += 1
    if dropped:
        log.info("round %d: %d of %d devices dropped out", rnd, len(dropped), len(cohort))
    return RoundSums(sums[0], sums[1], sums[2], survivors, extra), dropped, device_metrics


def _checked(reply: Message | None, node: int, n_items: int, dim: int, *, wrmf: bool) -> dict[str, np.ndarray]:
    if reply is None:
        raise FedRecError("no reply before the round timeout")
    if reply.has_error():
        raise FedRecError(f"device error: {reply.error.reason}")
    return update_arrays(reply, n_items, dim, wrmf=wrmf)


def evaluate_round(grid: Grid, cfg: RunConfig, state: ServerState, nodes: list[int], rnd: int, *,
                   rating_scale: tuple[float, float] | None, authority_key: bytes | None = None) -> dict[str, float]:
    """An evaluation cohort (``eval-cohort``) evaluates on its held-out rows; only sums and counts come back.

    The row reports ``eval_devices``, the size of the cohort, so a sampled
    estimate is never mistaken for the population's figure, and
    ``eval_replies``, the devices whose sums were counted (dropouts, refusals
    and an aborted secure round show as fewer). The downlink
    carries the public rating scale (predictions are clipped to it), so a
    device never loads the run's data to learn it. Under secure aggregation
    the sums come back through the secure sum (:mod:`.secure_eval`): the
    server sees the totals of at least ``secagg.eval-min-cohort`` devices,
    never one device's.
    """
    cohort = sample_eval_cohort(nodes, cfg.fed.eval_size(len(nodes)), seed=cfg.fed.seed, round_=rnd)
    if cfg.secagg.enabled:
        secure = secure_evaluate(grid, cfg, state, cohort, rnd, rating_scale=rating_scale,
                                 authority_key=authority_key)
        return {"eval_replies": 0, **secure, "eval_devices": len(cohort)}
    content = train_content(global_record(state.glob, cfg.downlink),
                            downlink_record(cfg, round_=rnd, global_mean=state.glob.global_mean,
                                          rating_scale=rating_scale))
    replies = _send(grid, content, wire.MSG_EVALUATE, cohort, rnd, cfg.round_timeout)
    total = MetricSums()
    answered = [reply for reply in replies.values() if not reply.has_error()]
    for reply in answered:
        total.merge(MetricSums.from_flat(metric_values(reply)))
    return {**total.result(), "eval_devices": len(cohort), "eval_replies": len(answered)}


def _send(grid: Grid, content: RecordDict, kind: str, nodes: list[int], rnd: int,
          timeout: float) -> dict[int, Message]:
    # TTL = the round's timeout: work for a round the server has given up on expires instead of
    # queueing in front of the next round.
    messages = [Message(content, dst_node_id=n, message_type=kind, group_id=str(rnd), ttl=timeout) for n in nodes]
    replies = grid.send_and_receive(messages, timeout=timeout)
    return {r.metadata.src_node_id: r for r in replies}


def _record(run_dir: Path | None, state: ServerState, cfg: RunConfig, row: dict[str, Any],
            privacy_state: dict[str, Any], start: float) -> None:
    """Checkpoint, then the metrics line (with the checkpoint's cost), then the log line."""
    if run_dir is not None:
        saved = time.perf_counter()
        sync_table(run_dir / DEVICE_STATE_FILE)  # the device rows of this round reach the disk before it
        # the round's row rides in the checkpoint: a crash between the two writes loses no metrics line
        save_checkpoint(run_dir / CHECKPOINT, state,
                        extra={"config": dict(cfg.flat), "privacy": privacy_state, "row": dict(row)})
        row["checkpoint_seconds"] = time.perf_counter() - saved
    row["seconds"] = time.perf_counter() - start
    log.info("round %d: %s", row["round"], {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    if run_dir is None:
        return
    path = run_dir / METRICS
    previous = path.read_text() if path.exists() else ""
    atomic_write_text(path, previous + json.dumps(row) + "\n")
