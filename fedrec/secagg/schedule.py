"""The SERVER's schedule of secure aggregation over any message transport, one or two rounds per trip.

A round is a sequence of four wire stages (:data:`WIRE_STAGES`); each stage
is one message round trip to the round's live nodes. :class:`RoundDriver`
holds one round's :class:`SecAggServer` and steps it a stage at a time, so a
scheduler can decide which stages travel together:

* :func:`aggregate_round_by_stage` runs one round alone, a trip per stage, through an
  ``exchange(stage, payloads)`` callable (four trips).
* :class:`RoundPipeline` runs consecutive rounds so that the next round's
  setup and share stages ride in the same trips as the current round's mask
  and unmask stages, through a ``trip({stage: payloads})`` callable that
  sends each node ONE message holding all of its parts::

      trip A of round r: mask(r)   + setup(r+1)
      trip B of round r: unmask(r) + share(r+1)

  A steady-state round therefore costs two trips. The first round of a run,
  and any round whose pre-started setup or share aborted, first runs its own
  setup and share trips. Payloads and the cryptography are exactly those of a
  round run alone; only the scheduling changes.

Each round keeps its own dropout bookkeeping: a node that refuses or fails
one part is a dropout of that part's round only, and a round that aborts
(fewer than ``t`` survivors) does not disturb the other one.

Protocol round ids (bound into every key derivation, ciphertext and mask)
must increase on every device from one attempt to the next
(:func:`fedrec.secagg.handle_secagg`), so they are derived from the server's
round number: :func:`protocol_round_id` gives ``2 r`` to round ``r`` when it is
pre-started in the previous round's trips and ``2 r + 1`` when it runs its own
setup, so a fallback after an aborted pre-start still moves forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedrec.errors import SecAggConfigError, SecAggError, SecAggMessageError, SecAggProtocolError
from fedrec.secagg.graph import DEFAULT_SECURITY, Neighbours, SecurityParams, resolve_threshold
from fedrec.secagg.messages import Message
from fedrec.secagg.protocol_server import AggregateResult, SecAggServer
from fedrec.secagg.quantize import QuantConfig
from fedrec.wire import SECAGG_MASK, SECAGG_SETUP, SECAGG_SHARE, SECAGG_STAGES, SECAGG_UNMASK

WIRE_STAGES = SECAGG_STAGES

__all__ = [
    "Exchange",
    "RoundDriver",
    "RoundPipeline",
    "RoundPlan",
    "Trip",
    "protocol_round_id",
    "aggregate_round_by_stage",
    "send_trip",
]

logger = logging.getLogger("fedrec.secagg.schedule")

Payloads = dict[int, dict[str, Any]]
Replies = Mapping[int, Mapping[str, Any] | None]

Exchange = Callable[[str, Payloads], Replies]
"""``exchange(stage, {node: payload}) -> {node: reply or None}`` for the nodes that answered."""

Trip = Callable[[Mapping[str, Payloads]], Mapping[str, Replies]]
"""``trip({stage: {node: payload}}) -> {stage: {node: reply or None}}``.

One message per node carries every part addressed to it; a part's reply is
``None`` when the node refused or failed that part, and absent when the node
did not answer at all."""

_EARLY = (SECAGG_SETUP, SECAGG_SHARE)
_LATE = (SECAGG_MASK, SECAGG_UNMASK)


def protocol_round_id(number: int, *, prestarted: bool) -> int:
    """The protocol round id of server round ``number``: ``2 number`` pre-started, ``2 number + 1`` on its own.

    Both increase with ``number``, and the stand-alone attempt of a round
    comes after its pre-started one, as devices require.
    """
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise SecAggConfigError(f"round number must be a non-negative int, got {number!r}")
    return 2 * number + (0 if prestarted else 1)


class RoundDriver:
    """One round's server side as a sequence of wire stages, stepped from outside.

    :attr:`stage` names the next stage to send (``None`` once the round is
    over), :meth:`payloads` gives its per-node payloads and :meth:`deliver`
    hands the replies back. Parameters are those of :class:`SecAggServer`;
    ``threshold`` may be a fraction (:func:`resolve_threshold`).

    Raises
    ------
    SecAggConfigError
        The settings cannot work (from the constructor).
    """

    def __init__(
        self,
        *,
        round_id: int,
        participants: Sequence[int],
        threshold: int | float,
        neighbours: Neighbours,
        quant: QuantConfig,
        graph_seed: bytes | None = None,
        strict: bool = False,
        allow_minority_threshold: bool = False,
        security: SecurityParams | None = DEFAULT_SECURITY,
        authority_key: bytes | None = None,
    ) -> None:
        t = resolve_threshold(
            threshold,
            n_participants=len(participants),
            neighbours=neighbours,
            allow_minority_threshold=allow_minority_threshold,
            params=security,
        )
        self.server = SecAggServer(
            round_id=round_id,
            participants=participants,
            threshold=t,
            neighbours=neighbours,
            quant=quant,
            graph_seed=graph_seed,
            strict=strict,
            allow_minority_threshold=allow_minority_threshold,
            security=security,
            authority_key=authority_key,
        )
        setup = self.server.setup
        logger.info(
            "round %d: secure aggregation of %d elements among %d participants, k=%d, t=%d, %d-bit ring",
            round_id,
            setup.quant.total_length,
            len(setup.participants),
            setup.k,
            t,
            setup.quant.bits,
        )
        self._index = 0
        self._outgoing: Mapping[int, Message] = self.server.setup_messages()
        self._sent: frozenset[int] = frozenset()
        self._result: AggregateResult | None = None
        self._error: SecAggError | None = None

    def __repr__(self) -> str:
        return f"RoundDriver(round_id={self.round_id}, stage={self.stage!r})"

    @property
    def round_id(self) -> int:
        """The protocol round id."""
        return self.server.setup.round_id

    @property
    def stage(self) -> str | None:
        """The next wire stage to send, or ``None`` once the round completed or aborted."""
        if self._error is not None or self._index >= len(WIRE_STAGES):
            return None
        return WIRE_STAGES[self._index]

    def bind_model(self, model_digest: bytes) -> None:
        """The digest of the downlink sent with this round's mask stage (bound into its pairwise masks)."""
        self.server.model_digest = model_digest

    @property
    def error(self) -> SecAggError | None:
        """Why the round aborted, or ``None``."""
        return self._error

    def payloads(self) -> Payloads:
        """``{node: payload}`` of the next stage; nodes given the same message share one dict."""
        stage = self.stage
        if stage is None:
            raise SecAggProtocolError(f"round {self.round_id} has no stage left to send")
        forms: dict[int, dict[str, Any]] = {}
        out: Payloads = {}
        for node, message in self._outgoing.items():
            if id(message) not in forms:
                forms[id(message)] = message.to_dict()
            out[node] = forms[id(message)]
        self._sent = frozenset(out)
        return out

    def deliver(self, raw: Replies) -> None:
        """Hand in the next stage's replies (``None`` for an error reply, absent for silence).

        Raises
        ------
        SecAggError
            The round aborted at this stage (kept in :attr:`error`, raised
            again by :meth:`result`).
        """
        stage = self.stage
        if stage is None:
            raise SecAggProtocolError(f"round {self.round_id} has no stage awaiting replies")
        if not isinstance(raw, Mapping):
            raise SecAggMessageError(f"replies for {stage} are a {type(raw).__name__}, not a mapping")
        replies = {node: reply for node, reply in raw.items() if reply is not None}
        errors = sorted(node for node, reply in raw.items() if reply is None)
        logger.info(
            "round %d %s: %d sent, %d replied, %d error replies %s, %d silent",
            self.round_id,
            stage,
            len(self._sent),
            len(replies),
            len(errors),
            errors,
            len(self._sent - set(raw)),
        )
        before = set(self.server.rejected)
        try:
            out = self._collect(stage, replies)
        except SecAggError as exc:
            self._error = exc
            self._outgoing = {}
            logger.error("round %d aborted at %s", self.round_id, stage)
            raise
        finally:
            rejected = sorted(set(self.server.rejected) - before)
            if rejected:
                logger.info("round %d %s: rejected replies from nodes %s", self.round_id, stage, rejected)
        self._index += 1
        if isinstance(out, AggregateResult):
            self._result, self._outgoing = out, {}
            logger.info("round %d %s: %d survivors", self.round_id, stage, out.n_contributors)
        else:
            self._outgoing = out
            logger.info("round %d %s: %d survivors", self.round_id, stage, len(out))

    def _collect(self, stage: str, replies: Mapping[int, Mapping[str, Any]]) -> Any:
        if stage == SECAGG_SETUP:
            return self.server.collect_keys(replies)
        if stage == SECAGG_SHARE:
            return self.server.collect_shares(replies)
        if stage == SECAGG_MASK:
            return self.server.collect_masked(replies)
        return self.server.collect_unmask(replies)

    def result(self) -> AggregateResult:
        """The completed round's sums.

        Raises
        ------
        SecAggError
            The round aborted (:class:`SecAggAbort` when too few survived).
        SecAggProtocolError
            The round has stages left.
        """
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise SecAggProtocolError(f"round {self.round_id} is at stage {self.stage!r}")
        return self._result


def send_trip(trip: Trip, drivers: Sequence[RoundDriver]) -> None:
    """Send the next stage of every live driver in one trip and deliver each round its replies.

    Rounds must be at different stages (one part per stage and node). A round
    that aborts keeps its error (:meth:`RoundDriver.result`); the others go on.

    Raises
    ------
    SecAggConfigError
        Two rounds are at the same stage.
    SecAggMessageError
        ``trip`` returned something other than a mapping.
    """
    live = [d for d in drivers if d.stage is not None]
    parts: dict[str, Payloads] = {}
    for driver in live:
        stage = driver.stage
        assert stage is not None
        if stage in parts:
            raise SecAggConfigError(f"two rounds at stage {stage!r} cannot share a trip")
        parts[stage] = driver.payloads()
    if not parts:
        return
    raw = trip(parts)
    if not isinstance(raw, Mapping):
        raise SecAggMessageError(f"trip returned {type(raw).__name__}, not a mapping")
    for driver in live:
        stage = driver.stage
        assert stage is not None
        try:
            driver.deliver(raw.get(stage, {}))
        except SecAggError:
            continue


def aggregate_round_by_stage(
    exchange: Exchange,
    *,
    round_id: int,
    participants: Sequence[int],
    threshold: int | float,
    neighbours: Neighbours,
    quant: QuantConfig,
    graph_seed: bytes | None = None,
    strict: bool = False,
    allow_minority_threshold: bool = False,
    security: SecurityParams | None = DEFAULT_SECURITY,
    model_digest: bytes | None = None,
    authority_key: bytes | None = None,
) -> AggregateResult:
    """Run one secure-aggregation round among ``participants`` through ``exchange``, a trip per stage.

    Parameters
    ----------
    exchange:
        ``exchange(stage, {node: payload})`` sends each node its payload for
        ``stage`` (one of :data:`WIRE_STAGES`) and returns ``{node: reply}``
        for the replies that arrived; absent nodes and ``None`` replies
        (error replies) are dropouts.
    threshold:
        An int ``t``, or a fraction in ``(0, 1]`` (:func:`resolve_threshold`).
    neighbours, quant, graph_seed, strict, allow_minority_threshold, security, authority_key:
        As for :class:`SecAggServer`.
    model_digest:
        The digest of the downlink sent with the mask stage, when there is one.

    Raises
    ------
    SecAggAbort
        Fewer than ``t`` clients (or holders of a needed secret) remain.
    SecAggConfigError
        The settings cannot work.
    """
    driver = RoundDriver(
        round_id=round_id,
        participants=participants,
        threshold=threshold,
        neighbours=neighbours,
        quant=quant,
        graph_seed=graph_seed,
        strict=strict,
        allow_minority_threshold=allow_minority_threshold,
        security=security,
        authority_key=authority_key,
    )
    if model_digest is not None:
        driver.bind_model(model_digest)
    while (stage := driver.stage) is not None:
        raw = exchange(stage, driver.payloads())
        driver.deliver(raw)
    return driver.result()


@dataclass(frozen=True)
class RoundPlan:
    """What the server fixes before a round: its number, cohort and settings.

    ``number`` is the server's round number (protocol ids derive from it);
    the other fields are those of :class:`SecAggServer` (``authority_key``:
    the enrolment authority's public key when the server has it, so that it
    drops advertisements that do not verify before any device sees them).
    """

    number: int
    participants: tuple[int, ...]
    threshold: int | float
    neighbours: Neighbours
    quant: QuantConfig
    graph_seed: bytes | None = field(default=None, repr=False)
    security: SecurityParams | None = DEFAULT_SECURITY
    authority_key: bytes | None = field(default=None, repr=False)

    def driver(self, *, prestarted: bool, strict: bool, allow_minority_threshold: bool) -> RoundDriver:
        """A fresh driver for this plan (:func:`protocol_round_id` gives its id)."""
        return RoundDriver(
            round_id=protocol_round_id(self.number, prestarted=prestarted),
            participants=self.participants,
            threshold=self.threshold,
            neighbours=self.neighbours,
            quant=self.quant,
            graph_seed=self.graph_seed,
            strict=strict,
            allow_minority_threshold=allow_minority_threshold,
            security=self.security,
            authority_key=self.authority_key,
        )


class RoundPipeline:
    """Consecutive rounds, each pre-started during the previous one's mask and unmask trips.

    Call :meth:`run` once per round, with the plan of the round after it when
    there is one; :meth:`abandon` when the run stops with a round pre-started.
    Without ``next_plan`` a round runs alone in four trips, which is also the
    non-pipelined mode.

    Parameters
    ----------
    strict, allow_minority_threshold:
        As for :class:`SecAggServer`, for every round.
    """

    def __init__(self, *, strict: bool = False, allow_minority_threshold: bool = False) -> None:
        self._strict = strict
        self._minority = allow_minority_threshold
        self._pending: tuple[RoundPlan, RoundDriver] | None = None

    @property
    def pending(self) -> RoundPlan | None:
        """The plan of the round pre-started by the last :meth:`run`, if any."""
        return None if self._pending is None else self._pending[0]

    def run(self, trip: Trip, plan: RoundPlan, *, next_plan: RoundPlan | None = None,
            model_digest: bytes | None = None) -> AggregateResult:
        """Run round ``plan`` to its end, pre-starting ``next_plan`` in the same trips.

        ``model_digest`` is the digest of the downlink this round's mask stage carries.

        Raises
        ------
        SecAggAbort
            Round ``plan`` ended with too few survivors (a pre-started next
            round is kept all the same).
        SecAggError
            Round ``plan`` failed otherwise (settings, inconsistent shares).
        """
        current = self._claim(plan)
        if current is None:
            current = plan.driver(prestarted=False, strict=self._strict, allow_minority_threshold=self._minority)
        if model_digest is not None:
            current.bind_model(model_digest)
        upcoming = self._prestart(next_plan)
        while _wants_trip(current, upcoming):
            send_trip(trip, _companions(current, upcoming))
        return current.result()

    def abandon(self) -> None:
        """Forget a pre-started round the run will not hold; devices drop its state with their next round."""
        if self._pending is not None:
            plan, driver = self._pending
            logger.info("round %d: pre-started secure aggregation (id %d) abandoned, the run stopped before it",
                        plan.number, driver.round_id)
        self._pending = None

    def _claim(self, plan: RoundPlan) -> RoundDriver | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        ready, driver = pending
        if ready == plan and driver.stage == SECAGG_MASK:
            return driver
        if driver.error is not None:
            why = f"its pre-started setup and share aborted ({driver.error})"
        elif ready != plan:
            why = "the pre-started round had another plan"
        else:
            why = f"the pre-started round stopped at {driver.stage!r}"
        logger.info("round %d: %s; running its own setup and share", plan.number, why)
        return None

    def _prestart(self, plan: RoundPlan | None) -> RoundDriver | None:
        if plan is None:
            return None
        try:
            driver = plan.driver(prestarted=True, strict=self._strict, allow_minority_threshold=self._minority)
        except SecAggConfigError as exc:
            logger.warning("round %d: not pre-started: %s", plan.number, exc)
            return None
        self._pending = (plan, driver)
        return driver


def _wants_trip(current: RoundDriver, upcoming: RoundDriver | None) -> bool:
    return current.stage is not None or (upcoming is not None and upcoming.stage in _EARLY)


def _companions(current: RoundDriver, upcoming: RoundDriver | None) -> list[RoundDriver]:
    """The rounds of the next trip: the current one, joined by the next one once the current one masks."""
    drivers = [current] if current.stage is not None else []
    if upcoming is not None and upcoming.stage in _EARLY and (current.stage is None or current.stage in _LATE):
        drivers.append(upcoming)
    return drivers
