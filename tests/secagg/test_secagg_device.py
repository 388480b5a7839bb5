"""Rounds through aggregate_round_by_stage + handle_secagg over an in-memory transport."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from secagg_helpers import stored, trust, wire

from fedrec.errors import SecAggAbort, SecAggError
from fedrec.secagg import (
    WIRE_STAGES,
    AggregateResult,
    QuantConfig,
    SecAggClient,
    SecAggConfigError,
    SecAggMessageError,
    SecAggProtocolError,
    SecAggServer,
    SecAggStateError,
    aggregate_round_by_stage,
    check_payload,
    flatten_update,
    handle_secagg,
    quant_config_for,
    resolve_threshold,
    unflatten_sums,
)
from fedrec.secagg.device_state import (
    PREFIX,
    last_round,
    live_rounds,
    load_round,
    store_round,
    stored_round,
    stored_stage,
)
from fedrec.secagg.inprocess import STAGES, Stage, aggregate_in_process
from fedrec.wire import (
    SECAGG_MASK,
    SECAGG_SETUP,
    SECAGG_SHARE,
    SECAGG_UNMASK,
    UPDATE_SEGMENTS,
)

N_ITEMS, DIM = 7, 3
IDS = [3, 11, 12, 25, 40, 41, 77, 90]
STAGE_OF = dict(zip(STAGES, WIRE_STAGES, strict=True))


def make_updates(ids: list[int], seed: int) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        node: {
            "item_factors": rng.normal(0.0, 0.4, (N_ITEMS, DIM)).astype(np.float32),
            "item_bias": rng.normal(0.0, 0.4, N_ITEMS).astype(np.float32),
            "counts": rng.integers(0, 4, N_ITEMS).astype(np.float32),
        }
        for node in ids
    }


class Network:
    """Devices behind an exchange; each keeps only its state mapping between stages.

    ``drops[node] = stage``: the node is silent from that core stage on;
    ``errors[node] = stage``: it sends an error reply (``None``) at that stage.
    """

    def __init__(
        self,
        updates: Mapping[int, Mapping[str, np.ndarray]],
        *,
        drops: Mapping[int, Stage] | None = None,
        errors: Mapping[int, Stage] | None = None,
        seed: int | None = None,
    ) -> None:
        self.updates = updates
        self.drops = dict(drops or {})
        self.errors = dict(errors or {})
        self.seed = seed
        self.states: dict[int, dict[str, np.ndarray]] = {node: {} for node in updates}
        self.sources = {
            node: (np.random.default_rng([seed, node]), np.random.default_rng([seed, node + 1]).bytes)
            for node in updates
            if seed is not None
        }
        self.trained: list[tuple[int, str]] = []
        self.sent: dict[str, dict[int, dict[str, Any]]] = {}
        self.refusals: dict[int, str] = {}
        self.current = ""

    def segments(self, node: int) -> Callable[[], dict[str, np.ndarray]]:
        def train() -> dict[str, np.ndarray]:
            self.trained.append((node, self.current))
            return flatten_update(self.updates[node])

        return train

    def silent(self, node: int, stage: str, table: Mapping[int, Stage]) -> bool:
        return node in table and WIRE_STAGES.index(STAGE_OF[table[node]]) <= WIRE_STAGES.index(stage)

    def deliver(self, node: int, stage: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.current = stage
        rng, randbytes = self.sources.get(node, (None, None))
        state = stored(self.states[node])
        try:
            return handle_secagg(
                stage,
                wire(payload),
                state,
                node_id=node,
                trust=trust(node),
                segments=self.segments(node),
                rng=rng,
                randbytes=randbytes,
            )
        finally:
            self.states[node] = stored(state)

    def __call__(self, stage: str, payloads: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any] | None]:
        self.sent[stage] = {node: wire(p) for node, p in payloads.items()}
        replies: dict[int, dict[str, Any] | None] = {}
        for node, payload in payloads.items():
            if self.silent(node, stage, self.drops):
                continue
            if self.silent(node, stage, self.errors) and STAGE_OF[self.errors[node]] == stage:
                replies[node] = None
                continue
            if self.silent(node, stage, self.errors):
                continue
            try:
                replies[node] = wire(self.deliver(node, stage, payload))
            except SecAggError as exc:
                self.refusals[node] = str(exc)
                replies[node] = None
        return replies


def layout(cohort: int = len(IDS), bits: int = 32) -> QuantConfig:
    return quant_config_for(n_items=N_ITEMS, dim=DIM, clip=1.0, bits=bits, max_count=8.0, cohort=cohort)


def assert_within_bound(
    result: AggregateResult, quant: QuantConfig, updates: Mapping[int, Mapping[str, np.ndarray]]
) -> None:
    n = result.n_contributors
    sums = unflatten_sums(result.sums, n_items=N_ITEMS, dim=DIM)
    for spec in quant.segments:
        assert spec.scale is not None
        exact = sum(np.clip(updates[i][spec.name].astype(np.float64), spec.lo, spec.hi) for i in result.survivors)
        error = np.abs(sums[spec.name] - exact)
        assert np.all(error <= n / spec.scale + 1e-9), (spec.name, float(error.max()))
    exact_counts = sum(updates[i]["counts"].astype(np.float64) for i in result.survivors)
    assert np.array_equal(sums["counts"], exact_counts)


def drive(
    net: Network, *, round_id: int = 1, threshold: int | float = 5, neighbours: int | str = "all", **kw: Any
) -> AggregateResult:
    return aggregate_round_by_stage(
        net,
        security=None,
        round_id=round_id,
        participants=list(net.updates),
        threshold=threshold,
        neighbours=neighbours,  # type: ignore[arg-type]
        quant=kw.pop("quant", layout(len(net.updates))),
        **kw,
    )


# -- whole rounds -------------------------------------------------------------------


@pytest.mark.parametrize("neighbours", ["all", 4])
def test_full_round_equals_plain_sum_within_bound(neighbours: int | str) -> None:
    updates = make_updates(IDS, 0)
    net = Network(updates)
    threshold = 5 if neighbours == "all" else 3
    result = drive(net, threshold=threshold, neighbours=neighbours)
    assert result.survivors == IDS and result.dropped == [] and not result.rejected
    assert_within_bound(result, layout(), updates)
    for state in net.states.values():
        assert set(state) == {PREFIX + "last_round"}
        assert last_round(state) == 1


def test_every_payload_and_reply_is_record_compatible() -> None:
    net = Network(make_updates(IDS, 1))
    drive(net)
    assert set(net.sent) == set(WIRE_STAGES)
    for payloads in net.sent.values():
        for payload in payloads.values():
            check_payload(payload)
    assert isinstance(net.sent[SECAGG_SETUP][3]["participants"], list)


def reference(
    updates: Mapping[int, Mapping[str, np.ndarray]],
    drops: Mapping[int, Stage],
    *,
    seed: int,
    threshold: int,
    neighbours: int | str,
) -> AggregateResult | str:
    quant = layout(len(updates))
    server = SecAggServer(
        security=None,
        round_id=seed,
        participants=list(updates),
        threshold=threshold,
        neighbours=neighbours,  # type: ignore[arg-type]
        quant=quant,
        graph_seed=bytes(range(32)),
    )
    clients = {
        node: SecAggClient(
            node_id=node,
            trust=trust(node),
            rng=np.random.default_rng([seed, node]),
            randbytes=np.random.default_rng([seed, node + 1]).bytes,
        )
        for node in updates
    }
    inputs = {node: flatten_update(u) for node, u in updates.items()}
    try:
        return aggregate_in_process(server, clients, inputs, dropouts=drops)
    except SecAggAbort as exc:
        return str(exc)


DROP_CASES = [
    (stage, drop_idx, neighbours)
    for stage in STAGES
    for drop_idx in ((1,), (0, 4), (0, 2, 4, 6))
    for neighbours in ("all", 4)
]


@pytest.mark.parametrize(("stage", "drop_idx", "neighbours"), DROP_CASES)
def test_dropouts_complete_or_abort_as_the_core_does(stage: Stage, drop_idx: tuple[int, ...], neighbours: Any) -> None:
    updates = make_updates(IDS, 2)
    drops = {IDS[i]: stage for i in drop_idx}
    threshold = 5 if neighbours == "all" else 3
    expected = reference(updates, drops, seed=7, threshold=threshold, neighbours=neighbours)
    net = Network(updates, drops=drops, seed=7)
    try:
        got: AggregateResult | str = drive(
            net, round_id=7, threshold=threshold, neighbours=neighbours, graph_seed=bytes(range(32))
        )
    except SecAggAbort as exc:
        got = str(exc)
    if isinstance(expected, str):
        assert got == expected
        return
    assert isinstance(got, AggregateResult)
    assert got.survivors == expected.survivors and got.dropped == expected.dropped
    for name in UPDATE_SEGMENTS:
        assert np.array_equal(got.sums[name], expected.sums[name])
    assert_within_bound(got, layout(), updates)
    assert all(node not in {n for n, _ in net.trained} for node, s in drops.items() if s in ("advertise", "share"))


@pytest.mark.parametrize("stage", STAGES)
def test_error_replies_count_as_dropouts(stage: Stage) -> None:
    updates = make_updates(IDS, 3)
    net = Network(updates, errors={IDS[2]: stage})
    result = drive(net)
    assert (IDS[2] in result.survivors) is (stage == "unmask")
    assert_within_bound(result, layout(), updates)


def test_too_few_survivors_abort_and_devices_move_on() -> None:
    updates = make_updates(IDS, 4)
    net = Network(updates, drops={node: "mask" for node in IDS[:4]})
    with pytest.raises(SecAggAbort, match="4 clients sent masked input, threshold t=5"):
        drive(net)
    assert stored_stage(net.states[IDS[5]]) == "masked"
    assert stored_stage(net.states[IDS[0]]) == "shared"
    net.drops = {}
    result = drive(net, round_id=2)
    assert result.survivors == IDS
    assert_within_bound(result, layout(), updates)


def test_a_refusing_device_is_dropped_and_its_state_cleared() -> None:
    updates = make_updates(IDS, 5)
    net = Network(updates)
    original = net.deliver

    def tampering(node: int, stage: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if node == IDS[1] and stage == SECAGG_MASK:
            payload = {**payload, "ciphertexts": [bytes([c[0] ^ 1]) + c[1:] for c in payload["ciphertexts"]]}
        return original(node, stage, payload)

    net.deliver = tampering  # type: ignore[method-assign]
    result = drive(net)
    assert IDS[1] in result.dropped and "authentication" in net.refusals[IDS[1]]
    assert set(net.states[IDS[1]]) == {PREFIX + "last_round"}
    assert_within_bound(result, layout(), updates)


# -- segments() and the update layout ----------------------------------------------


def test_segments_are_requested_only_in_the_mask_stage() -> None:
    net = Network(make_updates(IDS, 6), drops={IDS[0]: "share", IDS[1]: "mask", IDS[2]: "unmask"})
    drive(net, threshold=4)
    assert all(stage == SECAGG_MASK for _, stage in net.trained)
    assert sorted(node for node, _ in net.trained) == IDS[2:]


def test_failed_training_leaves_the_state_for_a_retry() -> None:
    net = Network(make_updates(IDS, 7))
    server = SecAggServer(security=None, round_id=3, participants=IDS, threshold=5, neighbours="all", quant=layout())
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, server.setup.to_dict()) for n in IDS})
    routed = server.collect_shares({n: net.deliver(n, SECAGG_SHARE, keys[n].to_dict()) for n in IDS})
    node, before = IDS[0], stored(net.states[IDS[0]])

    def broken() -> dict[str, np.ndarray]:
        raise RuntimeError("training failed")

    state = stored(before)
    with pytest.raises(RuntimeError):
        handle_secagg(SECAGG_MASK, routed[node].to_dict(), state, node_id=node, trust=trust(node), segments=broken)
    assert stored_stage(state) == "shared" and set(state) == set(before)
    with pytest.raises(SecAggMessageError, match="item_bias must have shape"):
        handle_secagg(
            SECAGG_MASK,
            routed[node].to_dict(),
            state,
            node_id=node,
            trust=trust(node),
            segments=lambda: flatten_update({**net.updates[node], "item_bias": np.zeros(2)}),
        )
    assert stored_stage(state) == "shared"
    reply = handle_secagg(
        SECAGG_MASK, routed[node].to_dict(), state, node_id=node, trust=trust(node), segments=net.segments(node)
    )
    assert reply["masked"].shape == (layout().total_length,) and stored_stage(state) == "masked"


def test_update_layout_round_trips() -> None:
    quant = layout()
    assert [s.name for s in quant.segments] == list(UPDATE_SEGMENTS)
    assert [s.length for s in quant.segments] == [N_ITEMS * DIM, N_ITEMS, N_ITEMS]
    assert quant.segments[0].lo == -1.0 and quant.segments[2].lo == 0.0 and quant.segments[2].hi == 8.0
    assert all(s.scale is not None and math.log2(s.scale).is_integer() for s in quant.segments)
    update = make_updates([1], 8)[1]
    flat = flatten_update(update)
    assert list(flat) == list(UPDATE_SEGMENTS)
    assert [flat[s.name].shape for s in quant.segments] == [(s.length,) for s in quant.segments]
    back = unflatten_sums(flat, n_items=N_ITEMS, dim=DIM)
    for name in UPDATE_SEGMENTS:
        assert back[name].shape == update[name].shape
        assert np.array_equal(back[name], update[name])
    assert np.array_equal(flat["item_factors"][DIM : 2 * DIM], update["item_factors"][1])


def test_update_layout_refusals() -> None:
    update = make_updates([1], 9)[1]
    with pytest.raises(SecAggMessageError, match="missing"):
        flatten_update({k: v for k, v in update.items() if k != "counts"})
    with pytest.raises(SecAggMessageError, match="unknown"):
        flatten_update({**update, "user_factor": np.zeros(3)})
    with pytest.raises(SecAggMessageError, match="must be"):
        flatten_update({**update, "item_factors": np.zeros(N_ITEMS * DIM)})
    with pytest.raises(SecAggMessageError, match="counts"):
        flatten_update({**update, "counts": np.zeros(N_ITEMS + 1)})
    with pytest.raises(SecAggMessageError, match="expected"):
        unflatten_sums(flatten_update(update), n_items=N_ITEMS, dim=DIM + 1)
    with pytest.raises(SecAggMessageError, match="missing"):
        unflatten_sums({}, n_items=N_ITEMS, dim=DIM)


def test_bits_must_hold_the_cohort_sum() -> None:
    with pytest.raises(SecAggConfigError, match="bits=32 cannot hold"):
        quant_config_for(n_items=4, dim=2, clip=1.0, bits=32, max_count=2.0**14, cohort=2**20)
    wide = quant_config_for(n_items=4, dim=2, clip=1.0, bits=64, max_count=2.0**14, cohort=2**20)
    assert wide.segments[2].scale is not None and wide.segments[2].scale >= 1
    with pytest.raises(SecAggConfigError):
        quant_config_for(n_items=4, dim=2, clip=1.0, bits=16, max_count=1.0, cohort=10)
    for bad in ({"n_items": 0}, {"dim": 1.5}, {"clip": 0.0}, {"max_count": math.inf}, {"cohort": True}):
        kwargs: dict[str, Any] = {"n_items": 4, "dim": 2, "clip": 1.0, "bits": 32, "max_count": 4.0, "cohort": 10}
        with pytest.raises(SecAggConfigError):
            quant_config_for(**{**kwargs, **bad})


def test_layout_for_a_cohort_serves_any_smaller_round_but_not_a_larger_one() -> None:
    updates = make_updates(IDS[:6], 10)
    result = drive(Network(updates), threshold=4, quant=layout(len(IDS)))
    assert_within_bound(result, layout(len(IDS)), updates)
    with pytest.raises(SecAggConfigError, match="could wrap"):
        SecAggServer(
            security=None,
            round_id=1,
            participants=list(range(1, 40)),
            threshold=20,
            neighbours="all",
            quant=quant_config_for(n_items=2, dim=1, clip=1.0, bits=32, max_count=1.0, cohort=3),
        )


# -- rounds, replays and stale state -------------------------------------------------


def test_replayed_messages_of_an_earlier_round_are_refused() -> None:
    updates = make_updates(IDS, 11)
    net = Network(updates)
    drive(net, round_id=4)
    old = {stage: dict(payloads) for stage, payloads in net.sent.items()}
    node = IDS[3]
    for stage in WIRE_STAGES:
        state = stored(net.states[node])
        with pytest.raises(SecAggProtocolError, match="round 4"):
            handle_secagg(stage, old[stage][node], state, node_id=node, trust=trust(node), segments=net.segments(node))
        assert set(state) == {PREFIX + "last_round"}

    server = SecAggServer(security=None, round_id=5, participants=IDS, threshold=5, neighbours="all", quant=layout())
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, server.setup.to_dict()) for n in IDS})
    routed = server.collect_shares({n: net.deliver(n, SECAGG_SHARE, keys[n].to_dict()) for n in IDS})
    before = stored(net.states[node])
    for stage in WIRE_STAGES:
        with pytest.raises(SecAggProtocolError, match="round 4 refused"):
            net.deliver(node, stage, old[stage][node])
        assert stored_stage(net.states[node]) == "shared"
        assert all(np.array_equal(before[k], net.states[node][k]) for k in before)
    masked = {n: net.deliver(n, SECAGG_MASK, routed[n].to_dict()) for n in IDS}
    requests = server.collect_masked(masked)
    result = server.collect_unmask({n: net.deliver(n, SECAGG_UNMASK, requests[n].to_dict()) for n in IDS})
    assert result.survivors == IDS
    assert_within_bound(result, layout(), updates)
    assert sum(1 for n, s in net.trained if n == node) == 2


def test_repeated_or_out_of_order_messages_of_the_current_round_leave_state_alone() -> None:
    net = Network(make_updates(IDS, 12))
    server = SecAggServer(security=None, round_id=8, participants=IDS, threshold=5, neighbours="all", quant=layout())
    setup = server.setup.to_dict()
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, setup) for n in IDS})
    node = IDS[0]
    before = stored(net.states[node])
    with pytest.raises(SecAggProtocolError, match="round 8 already began"):
        net.deliver(node, SECAGG_SETUP, setup)
    with pytest.raises(SecAggProtocolError, match="expected 'shared'"):
        net.deliver(node, SECAGG_MASK, {"round_id": 8, "node_id": node, "senders": [], "ciphertexts": []})
    with pytest.raises(SecAggProtocolError, match="expected 'masked'"):
        net.deliver(node, SECAGG_UNMASK, {"round_id": 8, "node_id": node, "survivors": [], "dropped": []})
    assert all(np.array_equal(before[k], net.states[node][k]) for k in before) and set(before) == set(net.states[node])
    assert not net.trained
    reply = net.deliver(node, SECAGG_SHARE, keys[node].to_dict())
    with pytest.raises(SecAggProtocolError, match="expected 'advertised'"):
        net.deliver(node, SECAGG_SHARE, keys[node].to_dict())
    assert reply["node_id"] == node


def test_a_new_round_discards_an_unfinished_one() -> None:
    net = Network(make_updates(IDS, 13))
    server = SecAggServer(security=None, round_id=20, participants=IDS, threshold=5, neighbours="all", quant=layout())
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, server.setup.to_dict()) for n in IDS})
    for n in IDS:
        net.deliver(n, SECAGG_SHARE, keys[n].to_dict())
    old_peers = load_round(net.states[IDS[0]], 20)[PREFIX + "share_keys"]
    assert stored_round(net.states[IDS[0]]) == 20
    net.drops = {}
    result = drive(net, round_id=21)
    assert result.survivors == IDS
    assert load_round(net.states[IDS[0]], 20) == {}
    assert set(net.states[IDS[0]]) == {PREFIX + "last_round"} and last_round(net.states[IDS[0]]) == 21
    assert old_peers.size
    state = stored(net.states[IDS[1]])
    handle_secagg(SECAGG_SETUP, server.setup.to_dict() | {"round_id": 30}, state, node_id=IDS[1], trust=trust(IDS[1]))
    with pytest.raises(SecAggProtocolError, match="round 31 refused, no setup received"):
        handle_secagg(SECAGG_SHARE, {"round_id": 31}, state, node_id=IDS[1], trust=trust(IDS[1]))
    assert stored_round(state) is None and last_round(state) == 30


def test_setup_of_a_round_this_node_is_not_in_aborts_only_that_round() -> None:
    state: dict[str, np.ndarray] = {"user.9.bias": np.zeros(1, np.float32)}
    server = SecAggServer(security=None, round_id=2, participants=IDS, threshold=5, neighbours="all", quant=layout())
    with pytest.raises(SecAggMessageError, match="not a participant"):
        handle_secagg(SECAGG_SETUP, server.setup.to_dict(), state, node_id=1000, trust=trust(1000))
    assert set(state) == {"user.9.bias", PREFIX + "last_round"}
    with pytest.raises(SecAggProtocolError, match="round 2 refused, that round is over"):
        handle_secagg(SECAGG_SHARE, {"round_id": 2}, state, node_id=1000, trust=trust(1000))


def test_handler_input_checks() -> None:
    state: dict[str, np.ndarray] = {}
    with pytest.raises(SecAggMessageError, match="unknown secure-aggregation stage"):
        handle_secagg("train", {}, state, node_id=1, trust=trust(1))
    with pytest.raises(SecAggConfigError, match="needs a segments"):
        handle_secagg(SECAGG_MASK, {"round_id": 1}, state, node_id=1, trust=trust(1))
    for payload in ({}, {"round_id": -1}, {"round_id": True}, {"round_id": "1"}):
        with pytest.raises(SecAggMessageError, match="round_id"):
            handle_secagg(SECAGG_SHARE, payload, state, node_id=1, trust=trust(1))
    with pytest.raises(SecAggMessageError, match="mapping"):
        handle_secagg(SECAGG_SHARE, [1], state, node_id=1, trust=trust(1))  # type: ignore[arg-type]
    assert state == {}


def test_state_of_another_node_is_refused() -> None:
    net = Network(make_updates(IDS, 14))
    server = SecAggServer(security=None, round_id=2, participants=IDS, threshold=5, neighbours="all", quant=layout())
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, server.setup.to_dict()) for n in IDS})
    with pytest.raises(SecAggStateError, match=f"belongs to node {IDS[0]}"):
        handle_secagg(SECAGG_SHARE, keys[IDS[1]].to_dict(), net.states[IDS[0]], node_id=IDS[1], trust=trust(IDS[1]))


def test_misaddressed_routed_shares_abort_the_round_on_the_device() -> None:
    net = Network(make_updates(IDS, 15))
    server = SecAggServer(security=None, round_id=2, participants=IDS, threshold=5, neighbours="all", quant=layout())
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, server.setup.to_dict()) for n in IDS})
    routed = server.collect_shares({n: net.deliver(n, SECAGG_SHARE, keys[n].to_dict()) for n in IDS})
    with pytest.raises(SecAggMessageError, match="addressed to node"):
        net.deliver(IDS[0], SECAGG_MASK, routed[IDS[1]].to_dict())
    assert set(net.states[IDS[0]]) == {PREFIX + "last_round"}
    assert not net.trained
    with pytest.raises(SecAggProtocolError, match="that round is over"):
        net.deliver(IDS[0], SECAGG_MASK, routed[IDS[0]].to_dict())


# -- threshold and payload checks ------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "n", "neighbours", "minority", "expected"),
    [
        (0.5, 10, "all", False, 5),
        (0.5, 11, "all", False, 6),
        (0.3, 10, "all", False, 5),
        (0.3, 10, "all", True, 3),
        (0.7, 10, "all", False, 7),
        (1.0, 10, "all", False, 9),
        (0.5, 100, 14, False, 8),
        (0.9, 100, 14, False, 14),
        (0.6, 10, 20, False, 6),
        (4, 10, "all", False, 4),
    ],
)
def test_threshold_resolution(threshold: float, n: int, neighbours: Any, minority: bool, expected: int) -> None:
    t = resolve_threshold(
        threshold, n_participants=n, neighbours=neighbours, allow_minority_threshold=minority, params=None
    )
    assert t == expected


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, math.nan, True, "0.5", None])
def test_threshold_refusals(bad: Any) -> None:
    with pytest.raises(SecAggConfigError):
        resolve_threshold(bad, n_participants=10, neighbours="all")


def test_fractional_threshold_drives_a_round() -> None:
    updates = make_updates(IDS, 16)
    net = Network(updates, drops={IDS[0]: "mask", IDS[1]: "mask", IDS[2]: "mask"})
    result = drive(net, threshold=0.5)
    assert result.n_contributors == 5
    assert_within_bound(result, layout(), updates)
    net = Network(updates, drops={IDS[0]: "mask", IDS[1]: "mask", IDS[2]: "mask", IDS[3]: "mask"})
    with pytest.raises(SecAggAbort, match="threshold t=4 not met"):
        drive(net, threshold=0.5)


@pytest.mark.parametrize(
    "payload",
    [{"a": {"b": 1}}, {"a": [1, "x"]}, {"a": [[1]]}, {"a": (1, 2)}, {"a": None}, {1: 2}, {"a": np.int64(3)}],
)
def test_check_payload_refuses_what_a_record_cannot_hold(payload: dict[Any, Any]) -> None:
    with pytest.raises(SecAggMessageError):
        check_payload(payload)


def test_check_payload_accepts_record_values() -> None:
    check_payload(
        {
            "i": 2**64 - 1,
            "f": 0.5,
            "s": "x",
            "b": b"\x00",
            "t": True,
            "l": [b"a", b"b"],
            "e": [],
            "a": np.zeros(3, np.uint32),
        }
    )


# -- secrets -------------------------------------------------------------------------


def test_driver_logs_counts_and_never_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    updates = make_updates(IDS, 17)
    net = Network(updates, drops={IDS[0]: "mask"}, errors={IDS[1]: "unmask"})
    original = net.deliver
    secrets: list[bytes] = []

    def recording(node: int, stage: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return original(node, stage, payload)
        finally:
            for round_id in live_rounds(net.states[node]):
                for key, value in load_round(net.states[node], round_id).items():
                    if value.dtype == np.uint8 and key != PREFIX + "format":
                        secrets.extend(bytes(row) for row in value.reshape(-1, value.shape[-1]) if len(row) >= 32)

    net.deliver = recording  # type: ignore[method-assign]
    drive(net)
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "survivors" in caplog.text and "error replies" in caplog.text
    assert len(secrets) > 100
    for secret in secrets:
        if secret == bytes(range(32)):
            continue
        assert secret.hex() not in text and repr(secret)[2:-1] not in text


# -- unreadable state and Flower records ------------------------------------------------


def test_unreadable_state_is_discarded_and_a_setup_starts_afresh() -> None:
    net = Network(make_updates(IDS, 18))
    server = SecAggServer(security=None, round_id=6, participants=IDS, threshold=5, neighbours="all", quant=layout())
    keys = server.collect_keys({n: net.deliver(n, SECAGG_SETUP, server.setup.to_dict()) for n in IDS})
    node = IDS[0]
    store_round(net.states[node], 6, {**load_round(net.states[node], 6), PREFIX + "seed": np.zeros(5, np.uint8)})
    with pytest.raises(SecAggStateError, match="'secagg.seed' has shape"):
        net.deliver(node, SECAGG_SHARE, keys[node].to_dict())
    assert set(net.states[node]) == {PREFIX + "last_round"}
    net.states[node][PREFIX + "last_round"] = np.array([6.0])
    net.states[node]["user.3.bias"] = np.zeros(1, np.float32)
    result = drive(net, round_id=7)
    assert result.survivors == IDS
    assert set(net.states[node]) == {"user.3.bias", PREFIX + "last_round"}


def test_round_through_flower_records() -> None:
    flwr_app = pytest.importorskip("flwr.app")
    serde = pytest.importorskip("flwr.common.serde")

    def as_record(payload: Mapping[str, Any]) -> dict[str, Any]:
        arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
        config = flwr_app.ConfigRecord({k: v for k, v in payload.items() if k not in arrays})
        out: dict[str, Any] = dict(serde.config_record_from_proto(serde.config_record_to_proto(config)))
        record = flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in arrays.items()})
        record = serde.array_record_from_proto(serde.array_record_to_proto(record))
        out.update({k: a.numpy() for k, a in record.items()})
        return out

    updates = make_updates(IDS, 19)
    net = Network(updates, drops={IDS[4]: "mask"})
    states: dict[int, Any] = {n: serde.array_record_to_proto(flwr_app.ArrayRecord()) for n in IDS}

    def deliver(node: int, stage: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        record = serde.array_record_from_proto(states[node])
        state = {k: a.numpy() for k, a in record.items()}
        try:
            return as_record(
                handle_secagg(
                    stage, as_record(payload), state, node_id=node, trust=trust(node), segments=net.segments(node)
                )
            )
        finally:
            states[node] = serde.array_record_to_proto(
                flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in state.items()})
            )

    net.deliver = deliver  # type: ignore[method-assign]
    result = drive(net, threshold=0.5, neighbours=4)
    assert result.dropped == [IDS[4]]
    assert_within_bound(result, layout(), updates)
