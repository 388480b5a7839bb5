"""Pipelined rounds: the next round's setup and share ride on the current round's mask and unmask.

Devices sit behind an in-memory trip (one message per node holding all of its
parts) and keep only their state mapping between trips; each part may be
answered, refused or lost on its own, and a whole message may be lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import pytest
import secagg_helpers
from hypothesis import event, given, settings
from hypothesis import strategies as st
from secagg_helpers import stored, trust

from fedrec.errors import SecAggAbort
from fedrec.secagg import (
    AggregateResult,
    QuantConfig,
    RoundPipeline,
    RoundPlan,
    SecAggClient,
    SecAggConfigError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
    SecAggServer,
    flatten_update,
    handle_secagg,
    handle_secagg_parts,
    protocol_round_id,
    quant_config_for,
    send_trip,
    unflatten_sums,
)
from fedrec.secagg.device_state import PREFIX, last_round, live_rounds, stored_stage
from fedrec.secagg.inprocess import STAGES, Stage, aggregate_in_process
from fedrec.secagg.schedule import RoundDriver
from fedrec.wire import SECAGG_MASK, SECAGG_SETUP, SECAGG_SHARE, SECAGG_STAGES, SECAGG_UNMASK

wire = partial(secagg_helpers.wire, check=False)
N_ITEMS, DIM = 5, 2
IDS = [3, 11, 12, 25, 40, 41, 77, 90]
CORE_STAGE: dict[str, Stage] = dict(zip(SECAGG_STAGES, STAGES, strict=True))


def update(number: int, node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([number, node])
    return {
        "item_factors": rng.normal(0.0, 0.4, (N_ITEMS, DIM)).astype(np.float32),
        "item_bias": rng.normal(0.0, 0.4, N_ITEMS).astype(np.float32),
        "counts": rng.integers(0, 3, N_ITEMS).astype(np.float32),
    }


def layout(cohort: int) -> QuantConfig:
    return quant_config_for(n_items=N_ITEMS, dim=DIM, clip=1.0, bits=32, max_count=4.0, cohort=cohort)


def plan(number: int, cohort: list[int], *, threshold: int | float = 0.5, neighbours: int | str = "all") -> RoundPlan:
    return RoundPlan(
        security=None,
        number=number,
        participants=tuple(cohort),
        threshold=threshold,
        neighbours=neighbours,
        quant=layout(len(cohort)),  # type: ignore[arg-type]
        graph_seed=bytes([number]) * 32,
    )


class Devices:
    """Devices behind ``trip(parts)``: one message per node, each part answered on its own.

    ``faults[(round number, stage, node)]`` is ``"silent"`` (the part is lost)
    or ``"refuse"`` (the part arrives malformed, so the device refuses it);
    ``offline[trip index]`` are nodes whose whole message is lost.
    """

    def __init__(
        self,
        ids: list[int],
        *,
        faults: Mapping[tuple[int, str, int], str] | None = None,
        offline: Mapping[int, set[int]] | None = None,
    ) -> None:
        self.states: dict[int, dict[str, np.ndarray]] = {node: {} for node in ids}
        self.faults = dict(faults or {})
        self.offline = dict(offline or {})
        self.trips: list[list[tuple[str, int]]] = []
        self.messages: list[dict[int, set[str]]] = []
        self.lost: dict[int, dict[int, str]] = {}
        self.trained: list[tuple[int, int]] = []
        self.most_live = 0

    def segments(self, node: int, parts: Mapping[str, Mapping[str, Any]]) -> Callable[[], dict[str, np.ndarray]]:
        number = int(parts[SECAGG_MASK]["round_id"]) // 2 if SECAGG_MASK in parts else -1

        def train() -> dict[str, np.ndarray]:
            self.trained.append((number, node))
            return flatten_update(update(number, node))

        return train

    def lose(self, round_id: int, stage: str, node: int) -> None:
        self.lost.setdefault(round_id, {}).setdefault(node, stage)

    def __call__(self, parts: Mapping[str, dict[int, dict[str, Any]]]) -> dict[str, dict[int, dict[str, Any] | None]]:
        index = len(self.trips)
        self.trips.append(sorted((stage, int(next(iter(p.values()))["round_id"])) for stage, p in parts.items()))
        inbox: dict[int, dict[str, dict[str, Any]]] = {}
        for stage, payloads in parts.items():
            for node, payload in payloads.items():
                inbox.setdefault(node, {})[stage] = wire(payload)
        self.messages.append({node: set(p) for node, p in inbox.items()})
        out: dict[str, dict[int, dict[str, Any] | None]] = {stage: {} for stage in parts}
        for node, node_parts in inbox.items():
            delivered = self._deliverable(index, node, node_parts)
            if not delivered:
                continue
            state = stored(self.states[node])
            answer = handle_secagg_parts(
                delivered, state, node_id=node, trust=trust(node), segments=self.segments(node, delivered)
            )
            self.states[node] = stored(state)
            self.most_live = max(self.most_live, len(live_rounds(state)))
            for stage, reply in answer.replies.items():
                out[stage][node] = wire(reply)
            for stage in answer.errors:
                out[stage][node] = None
                self.lose(int(node_parts[stage]["round_id"]), stage, node)
        return out

    def _deliverable(self, index: int, node: int, parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        delivered = {}
        for stage, payload in parts.items():
            round_id = int(payload["round_id"])
            fault = self.faults.get((round_id // 2, stage, node))
            if node in self.offline.get(index, set()) or fault == "silent":
                self.lose(round_id, stage, node)
                continue
            delivered[stage] = {**payload, "bogus": 1} if fault == "refuse" else payload
        return delivered


def sum_rounds(devices: Devices, plans: list[RoundPlan], *, pipelined: bool = True) -> list[AggregateResult | str]:
    pipeline = RoundPipeline()
    out: list[AggregateResult | str] = []
    for i, current in enumerate(plans):
        upcoming = plans[i + 1] if pipelined and i + 1 < len(plans) else None
        try:
            out.append(pipeline.run(devices, current, next_plan=upcoming))
        except SecAggAbort as exc:
            out.append(str(exc))
    return out


def assert_within_bound(result: AggregateResult, number: int, quant: QuantConfig) -> None:
    n = result.n_contributors
    sums = unflatten_sums(result.sums, n_items=N_ITEMS, dim=DIM)
    for spec in quant.segments:
        assert spec.scale is not None
        exact = sum(
            np.clip(update(number, i)[spec.name].astype(np.float64), spec.lo, spec.hi) for i in result.survivors
        )
        assert np.all(np.abs(sums[spec.name] - exact) <= n / spec.scale + 1e-9), spec.name


# -- scheduling -------------------------------------------------------------------------


def test_steady_state_rounds_take_two_trips_and_sum_correctly() -> None:
    devices = Devices(IDS)
    plans = [plan(n, IDS) for n in (1, 2, 3, 4)]
    results = sum_rounds(devices, plans)
    assert [t for t in devices.trips] == [
        [("setup", 3)],
        [("share", 3)],
        [("mask", 3), ("setup", 4)],
        [("share", 4), ("unmask", 3)],
        [("mask", 4), ("setup", 6)],
        [("share", 6), ("unmask", 4)],
        [("mask", 6), ("setup", 8)],
        [("share", 8), ("unmask", 6)],
        [("mask", 8)],
        [("unmask", 8)],
    ]
    for number, result in enumerate(results, start=1):
        assert isinstance(result, AggregateResult) and result.survivors == IDS
        assert_within_bound(result, number, plans[number - 1].quant)
    assert devices.messages[2] == {node: {SECAGG_MASK, SECAGG_SETUP} for node in IDS}
    assert devices.messages[3] == {node: {SECAGG_UNMASK, SECAGG_SHARE} for node in IDS}
    assert devices.most_live == 2
    assert all(set(state) == {PREFIX + "last_round"} for state in devices.states.values())
    assert sorted(devices.trained) == sorted((n, node) for n in (1, 2, 3, 4) for node in IDS)


def test_without_pipelining_every_round_takes_four_trips() -> None:
    devices = Devices(IDS)
    results = sum_rounds(devices, [plan(n, IDS) for n in (1, 2)], pipelined=False)
    assert [len(t) for t in devices.trips] == [1] * 8
    assert [t[0] for trip in devices.trips for t in trip] == list(SECAGG_STAGES) * 2
    assert all(isinstance(r, AggregateResult) for r in results)
    assert devices.most_live == 1


def test_a_node_in_one_cohort_only_gets_only_its_part() -> None:
    first, second = IDS[:6], IDS[2:]
    devices = Devices(IDS)
    results = sum_rounds(devices, [plan(1, first), plan(2, second)])
    trip_a, trip_b = devices.messages[2], devices.messages[3]
    assert trip_a == {
        **{n: {SECAGG_MASK} for n in IDS[:2]},
        **{n: {SECAGG_MASK, SECAGG_SETUP} for n in IDS[2:6]},
        **{n: {SECAGG_SETUP} for n in IDS[6:]},
    }
    assert trip_b == {
        **{n: {SECAGG_UNMASK} for n in IDS[:2]},
        **{n: {SECAGG_UNMASK, SECAGG_SHARE} for n in IDS[2:6]},
        **{n: {SECAGG_SHARE} for n in IDS[6:]},
    }
    assert [r.survivors for r in results if isinstance(r, AggregateResult)] == [first, second]


def test_an_aborted_prestart_falls_back_to_its_own_setup_and_share() -> None:
    faults = {(2, SECAGG_SETUP, node): "refuse" for node in IDS[:5]}
    devices = Devices(IDS, faults=faults)
    results = sum_rounds(devices, [plan(1, IDS), plan(2, IDS), plan(3, IDS)])
    ids = [[rid for _, rid in trip] for trip in devices.trips]
    # The pre-start of round 2 (id 4) dies at setup; round 2 runs its own setup (id 5), which the same
    # faults abort too; round 3's pre-start (id 6) then runs its setup and share alone and is used.
    assert ids[2:] == [[3, 4], [3], [5], [6], [6], [6], [6]]
    assert isinstance(results[0], AggregateResult) and results[0].survivors == IDS
    assert isinstance(results[1], str) and "3 clients advertised keys" in results[1]
    assert isinstance(results[2], AggregateResult) and results[2].survivors == IDS


def test_a_prestart_lost_in_one_trip_only_succeeds_on_its_own() -> None:
    devices = Devices(IDS, offline={2: set(IDS[:5])})  # trip A of round 1: mask(1) and setup(2) lost
    results = sum_rounds(devices, [plan(1, IDS), plan(2, IDS)])
    assert isinstance(results[0], str)
    assert isinstance(results[1], AggregateResult) and results[1].survivors == IDS
    assert [rid for trip in devices.trips for _, rid in trip if rid // 2 == 2] == [4, 5, 5, 5, 5]
    assert all(set(state) == {PREFIX + "last_round"} for state in devices.states.values())


def test_one_round_aborting_leaves_the_other_alone() -> None:
    faults = {(1, SECAGG_MASK, node): "silent" for node in IDS[:5]}
    faults |= {(2, SECAGG_SHARE, IDS[6]): "refuse"}
    devices = Devices(IDS, faults=faults)
    results = sum_rounds(devices, [plan(1, IDS), plan(2, IDS)])
    assert isinstance(results[0], str) and "3 clients sent masked input" in results[0]
    assert isinstance(results[1], AggregateResult)
    assert results[1].survivors == [n for n in IDS if n != IDS[6]] and results[1].dropped == [IDS[6]]
    assert [len(t) for t in devices.trips] == [1, 1, 2, 1, 1, 1]  # trip B of round 1 carries share(2) only


def test_abandoned_prestart_is_dropped_by_the_next_round_on_devices() -> None:
    devices = Devices(IDS)
    pipeline = RoundPipeline()
    pipeline.run(devices, plan(1, IDS), next_plan=plan(2, IDS))
    assert pipeline.pending == plan(2, IDS)
    assert all(live_rounds(s) == [4] and stored_stage(s) == "shared" for s in devices.states.values())
    pipeline.abandon()
    assert pipeline.pending is None
    result = pipeline.run(devices, plan(3, IDS))
    assert result.survivors == IDS
    assert all(set(state) == {PREFIX + "last_round"} for state in devices.states.values())
    assert last_round(devices.states[IDS[0]]) == 7


def test_a_prestart_for_another_cohort_is_not_used() -> None:
    devices = Devices(IDS)
    pipeline = RoundPipeline()
    pipeline.run(devices, plan(1, IDS), next_plan=plan(2, IDS))
    result = pipeline.run(devices, plan(2, IDS[:6]))
    assert result.survivors == IDS[:6]
    assert [rid for _, rid in devices.trips[-1]] == [5]


def test_rounds_at_the_same_stage_cannot_share_a_trip() -> None:
    a, b = (plan(n, IDS).driver(prestarted=False, strict=False, allow_minority_threshold=False) for n in (1, 2))
    with pytest.raises(SecAggConfigError, match="cannot share a trip"):
        send_trip(Devices(IDS), [a, b])


def test_protocol_round_ids_increase_across_attempts() -> None:
    ids = [protocol_round_id(n, prestarted=p) for n in range(1, 5) for p in (True, False)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    with pytest.raises(SecAggConfigError):
        protocol_round_id(-1, prestarted=True)


def test_driver_refuses_steps_out_of_turn() -> None:
    driver = RoundDriver(
        security=None, round_id=1, participants=IDS, threshold=5, neighbours="all", quant=layout(len(IDS))
    )
    with pytest.raises(SecAggMessageError, match="not a mapping"):
        driver.deliver([])  # type: ignore[arg-type]
    driver.payloads()
    with pytest.raises(SecAggAbort):
        driver.deliver({})
    assert driver.stage is None and driver.error is not None
    with pytest.raises(SecAggProtocolError, match="no stage left"):
        driver.payloads()
    with pytest.raises(SecAggAbort):
        driver.result()


# -- dropouts in either round at every stage, against the round run alone ---------------------


def reference(plan_: RoundPlan, round_id: int, lost: Mapping[int, str]) -> AggregateResult | str:
    """The same round (same id, graph and losses) run alone in one process."""
    from fedrec.secagg import resolve_threshold

    t = resolve_threshold(
        plan_.threshold, n_participants=len(plan_.participants), neighbours=plan_.neighbours, params=None
    )
    server = SecAggServer(
        security=None,
        round_id=round_id,
        participants=plan_.participants,
        threshold=t,
        neighbours=plan_.neighbours,
        quant=plan_.quant,
        graph_seed=plan_.graph_seed,
    )
    clients = {node: SecAggClient(node_id=node, trust=trust(node)) for node in plan_.participants}
    inputs = {node: flatten_update(update(plan_.number, node)) for node in plan_.participants}
    drops = {node: CORE_STAGE[stage] for node, stage in lost.items()}
    try:
        return aggregate_in_process(server, clients, inputs, dropouts=drops)
    except SecAggAbort as exc:
        return str(exc)


@st.composite
def schedules(draw: Any) -> dict[str, Any]:
    ids = sorted(draw(st.sets(st.integers(0, 200), min_size=4, max_size=9)))
    n_rounds = draw(st.integers(2, 4))
    cohorts = [sorted(draw(st.sets(st.sampled_from(ids), min_size=3, max_size=len(ids)))) for _ in range(n_rounds)]
    complete = draw(st.booleans())
    density = draw(st.sampled_from([0, 3, 6, 12]))  # percent of parts (and of whole messages) lost
    faults = {
        (n + 1, stage, node): draw(st.sampled_from(["silent", "refuse"]))
        for n, cohort in enumerate(cohorts)
        for node in cohort
        for stage in SECAGG_STAGES
        if draw(st.integers(0, 99)) < density
    }
    offline = {i: {node for node in ids if draw(st.integers(0, 99)) < density // 2} for i in range(4 * n_rounds)}
    return {
        "ids": ids,
        "cohorts": cohorts,
        "complete": complete,
        "faults": faults,
        "offline": offline,
        "threshold": draw(st.sampled_from([0.5, 0.6, 0.8])),
    }


def _neighbours(n: int, complete: bool) -> int | str:
    if complete or n <= 4:
        return "all"
    k = n - 2
    return k - 1 if k % 2 == 1 and n % 2 == 1 else k


@settings(deadline=None, max_examples=60)
@given(schedules())
def test_pipelined_rounds_end_as_each_round_alone_would(sc: dict[str, Any]) -> None:
    plans = [
        plan(n + 1, c, threshold=sc["threshold"], neighbours=_neighbours(len(c), sc["complete"]))
        for n, c in enumerate(sc["cohorts"])
    ]
    devices = Devices(sc["ids"], faults=sc["faults"], offline=sc["offline"])
    results = sum_rounds(devices, plans)
    assert devices.most_live <= 2
    for current, got in zip(plans, results, strict=True):
        final = max(rid for trip in devices.trips for _, rid in trip if rid // 2 == current.number)
        expected = reference(current, final, devices.lost.get(final, {}))
        event("aborted" if isinstance(got, str) else "completed")
        event(f"pre-started: {final % 2 == 0}")
        assert isinstance(got, str) == isinstance(expected, str), (got, expected)
        if isinstance(got, AggregateResult) and isinstance(expected, AggregateResult):
            assert got.survivors == expected.survivors and got.dropped == expected.dropped
            assert_within_bound(got, current.number, current.quant)
            assert {node for n, node in devices.trained if n == current.number} >= set(got.survivors)


# -- a device's state with two live rounds ---------------------------------------------------


class Device:
    """One node's handler calls on its state mapping, the way a ClientApp makes them."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.state: dict[str, np.ndarray] = {}

    def one(self, stage: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        return handle_secagg(
            stage,
            wire(payload),
            self.state,
            node_id=self.node,
            trust=trust(self.node),
            segments=lambda: flatten_update(update(0, self.node)),
        )

    def parts(self, parts: Mapping[str, Mapping[str, Any]]) -> Any:
        return handle_secagg_parts(
            {s: wire(p) for s, p in parts.items()},
            self.state,
            node_id=self.node,
            trust=trust(self.node),
            segments=lambda: flatten_update(update(0, self.node)),
        )


def two_live_rounds() -> tuple[dict[int, Device], SecAggServer, SecAggServer, dict[int, Any]]:
    """Every device masked round 10 and advertised for round 12 in one message (trip A)."""
    devices = {node: Device(node) for node in IDS}
    a = SecAggServer(
        security=None, round_id=10, participants=IDS, threshold=5, neighbours="all", quant=layout(len(IDS))
    )
    b = SecAggServer(
        security=None, round_id=12, participants=IDS, threshold=5, neighbours="all", quant=layout(len(IDS))
    )
    keys = a.collect_keys({n: d.one(SECAGG_SETUP, a.setup.to_dict()) for n, d in devices.items()})
    routed = a.collect_shares({n: d.one(SECAGG_SHARE, keys[n].to_dict()) for n, d in devices.items()})
    answers = {
        n: d.parts({SECAGG_MASK: routed[n].to_dict(), SECAGG_SETUP: b.setup.to_dict()}) for n, d in devices.items()
    }
    assert all(not x.errors for x in answers.values())
    requests = a.collect_masked({n: x.replies[SECAGG_MASK] for n, x in answers.items()})
    peer_keys = b.collect_keys({n: x.replies[SECAGG_SETUP] for n, x in answers.items()})
    return devices, a, b, {"requests": requests, "peer_keys": peer_keys}


def test_a_device_holds_two_live_rounds_in_separate_namespaces() -> None:
    devices, _, _, _ = two_live_rounds()
    state = devices[IDS[0]].state
    assert live_rounds(state) == [10, 12] and last_round(state) == 12
    assert stored_stage(state, 10) == "masked" and stored_stage(state, 12) == "advertised"
    assert {k.split(".")[1] for k in state if k != PREFIX + "last_round"} == {"10", "12"}


def test_both_rounds_finish_from_one_message_each_way() -> None:
    devices, a, b, msgs = two_live_rounds()
    answers = {
        n: d.parts({SECAGG_UNMASK: msgs["requests"][n].to_dict(), SECAGG_SHARE: msgs["peer_keys"][n].to_dict()})
        for n, d in devices.items()
    }
    result = a.collect_unmask({n: x.replies[SECAGG_UNMASK] for n, x in answers.items()})
    assert result.survivors == IDS
    assert_within_bound(result, 0, a.setup.quant)
    routed = b.collect_shares({n: x.replies[SECAGG_SHARE] for n, x in answers.items()})
    assert all(live_rounds(d.state) == [12] and stored_stage(d.state) == "shared" for d in devices.values())
    masked = b.collect_masked({n: d.one(SECAGG_MASK, routed[n].to_dict()) for n, d in devices.items()})
    final = b.collect_unmask({n: d.one(SECAGG_UNMASK, masked[n].to_dict()) for n, d in devices.items()})
    assert final.survivors == IDS
    assert all(set(d.state) == {PREFIX + "last_round"} for d in devices.values())


def test_refusals_still_hold_per_round_with_two_live_rounds() -> None:
    devices, a, b, msgs = two_live_rounds()
    node = IDS[0]
    device = devices[node]
    before = stored(device.state)

    def unchanged() -> bool:
        return set(before) == set(device.state) and all(np.array_equal(before[k], device.state[k]) for k in before)

    with pytest.raises(SecAggProtocolError, match="round 10 refused, round 12 already began"):
        device.one(SECAGG_SETUP, a.setup.to_dict())
    with pytest.raises(SecAggProtocolError, match="round 12 refused, round 12 already began"):
        device.one(SECAGG_SETUP, b.setup.to_dict())
    with pytest.raises(SecAggProtocolError, match="expected 'shared'"):
        device.one(SECAGG_MASK, {"round_id": 12, "node_id": node, "senders": [], "ciphertexts": []})
    with pytest.raises(SecAggProtocolError, match="round 8 refused, that round is over"):
        device.one(SECAGG_SHARE, msgs["peer_keys"][node].to_dict() | {"round_id": 8})
    assert unchanged()

    both = msgs["requests"][node]
    split = {**both.to_dict(), "dropped": [both.survivors[0]]}
    answer = device.parts({SECAGG_UNMASK: split, SECAGG_SHARE: msgs["peer_keys"][node].to_dict()})
    assert "both survivor and dropped" in answer.errors[SECAGG_UNMASK] and SECAGG_SHARE in answer.replies
    assert live_rounds(device.state) == [12] and stored_stage(device.state) == "shared"


def test_tampered_misrouted_or_malformed_parts_end_only_their_own_round() -> None:
    devices, a, b, msgs = two_live_rounds()
    peer, requests = msgs["peer_keys"], msgs["requests"]
    short = peer[IDS[1]].to_dict()
    short["c_pks"] = [k[:31] for k in short["c_pks"]]
    answers = {
        n: d.parts({SECAGG_UNMASK: requests[n].to_dict(), SECAGG_SHARE: short if n == IDS[1] else peer[n].to_dict()})
        for n, d in devices.items()
    }
    assert "must be 32 bytes" in answers[IDS[1]].errors[SECAGG_SHARE]
    assert set(answers[IDS[1]].replies) == {SECAGG_UNMASK} and live_rounds(devices[IDS[1]].state) == []
    assert a.collect_unmask({n: x.replies[SECAGG_UNMASK] for n, x in answers.items()}).survivors == IDS

    routed = b.collect_shares({n: x.replies[SECAGG_SHARE] for n, x in answers.items() if SECAGG_SHARE in x.replies})
    tampered = routed[IDS[2]].to_dict()
    tampered["ciphertexts"] = [bytes([c[0] ^ 1]) + c[1:] for c in tampered["ciphertexts"]]
    with pytest.raises(SecAggIntegrityError):
        devices[IDS[2]].one(SECAGG_MASK, tampered)
    with pytest.raises(SecAggMessageError, match="addressed to node"):
        devices[IDS[3]].one(SECAGG_MASK, routed[IDS[4]].to_dict())
    wrong = routed[IDS[5]].to_dict() | {"ciphertexts": routed[IDS[5]].ciphertexts[:-1]}
    with pytest.raises(SecAggMessageError, match="equal lengths"):
        devices[IDS[5]].one(SECAGG_MASK, wrong)
    for n in (IDS[2], IDS[3], IDS[5]):
        assert live_rounds(devices[n].state) == [] and last_round(devices[n].state) == 12
    assert live_rounds(devices[IDS[4]].state) == [12] and stored_stage(devices[IDS[4]].state) == "shared"


def test_an_older_live_round_is_dropped_once_the_newer_one_moves_on() -> None:
    """unmask(r) travels with share(r + 1), before it: once share(r + 1) is accepted, round r is over."""
    devices, _, _, msgs = two_live_rounds()
    node = IDS[0]
    devices[node].one(SECAGG_SHARE, msgs["peer_keys"][node].to_dict())
    assert live_rounds(devices[node].state) == [12]
    with pytest.raises(SecAggProtocolError, match="round 10 refused, that round is over"):
        devices[node].one(SECAGG_UNMASK, msgs["requests"][node].to_dict())
    assert stored_stage(devices[node].state) == "shared"


def test_a_third_setup_keeps_only_the_newest_older_round() -> None:
    devices, _, _, _ = two_live_rounds()
    c = SecAggServer(
        security=None, round_id=14, participants=IDS, threshold=5, neighbours="all", quant=layout(len(IDS))
    )
    device = devices[IDS[0]]
    device.one(SECAGG_SETUP, c.setup.to_dict())
    assert live_rounds(device.state) == [12, 14]


def test_a_failing_part_costs_the_other_part_nothing() -> None:
    devices, _, b, msgs = two_live_rounds()
    node = IDS[0]
    routed = b.collect_shares({n: d.one(SECAGG_SHARE, msgs["peer_keys"][n].to_dict()) for n, d in devices.items()})
    device = devices[node]

    def broken() -> dict[str, np.ndarray]:
        raise RuntimeError("training failed")

    c = SecAggServer(
        security=None, round_id=20, participants=IDS, threshold=5, neighbours="all", quant=layout(len(IDS))
    )
    answer = handle_secagg_parts(
        {SECAGG_MASK: wire(routed[node].to_dict()), SECAGG_SETUP: wire(c.setup.to_dict())},
        device.state,
        node_id=node,
        trust=trust(node),
        segments=broken,
    )
    assert answer.errors == {SECAGG_MASK: "RuntimeError: training failed"} and SECAGG_SETUP in answer.replies
    assert live_rounds(device.state) == [12, 20] and stored_stage(device.state, 12) == "shared"
    with pytest.raises(SecAggMessageError, match="at least one part"):
        handle_secagg_parts({}, device.state, node_id=node, trust=trust(node))
    with pytest.raises(SecAggMessageError, match="unknown"):
        handle_secagg_parts({"train": {}}, device.state, node_id=node, trust=trust(node))
    bad = handle_secagg_parts({SECAGG_SHARE: {"round_id": "x"}}, device.state, node_id=node, trust=trust(node))
    assert "round_id" in bad.errors[SECAGG_SHARE] and live_rounds(device.state) == [12, 20]
