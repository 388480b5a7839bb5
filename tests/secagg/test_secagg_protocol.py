"""Whole rounds: the secure sum equals the plain sum of contributors' clipped inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from secagg_helpers import AUTHORITY, resign

from fedrec.errors import SecAggAbort
from fedrec.secagg import (
    AggregateResult,
    MaskedInput,
    QuantConfig,
    SecAggConfigError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
    SecAggServer,
    SegmentSpec,
    UnmaskResponse,
)
from fedrec.secagg.crypto.shamir import ELEMENT_BYTES
from fedrec.secagg.graph import DEFAULT_SECURITY, resolve_threshold
from fedrec.secagg.inprocess import STAGES, RoundTrace, Stage, aggregate_in_process, build_cohort

LAYOUT = QuantConfig(
    segments=(
        SegmentSpec.symmetric("emb", 12, clip=1.0),
        SegmentSpec.symmetric("bias", 3, clip=0.5),
        SegmentSpec("count", 3, lo=0.0, hi=4.0),
    )
)


def make_inputs(quant: QuantConfig, ids: list[int], seed: int) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {node: {s.name: rng.uniform(s.lo - 1.0, s.hi + 1.0, s.length) for s in quant.segments} for node in ids}


def assert_sum_within_bound(
    result: AggregateResult, server: SecAggServer, inputs: dict[int, dict[str, np.ndarray]]
) -> None:
    n = result.n_contributors
    assert n == len(result.survivors)
    for spec in server.setup.quant.segments:
        assert spec.scale is not None
        exact = np.zeros(spec.length)
        for node in result.survivors:
            exact += np.clip(inputs[node][spec.name], spec.lo, spec.hi)
        bound = n / spec.scale + 1e-12 * n * max(abs(spec.lo), abs(spec.hi))
        error = np.abs(result.sums[spec.name] - exact)
        assert np.all(error <= bound), (spec.name, float(error.max()), bound)


def one_round(
    n: int = 6,
    *,
    threshold: int = 4,
    neighbours: int | str = "all",
    drops: dict[int, Stage] | None = None,
    seed: int = 0,
    quant: QuantConfig = LAYOUT,
    ids: list[int] | None = None,
) -> tuple[AggregateResult, SecAggServer, dict[int, dict[str, np.ndarray]]]:
    ids = ids if ids is not None else [1000 + 7 * i for i in range(n)]
    server, clients = build_cohort(
        security=None,
        round_id=seed + 1,
        participants=ids,
        threshold=threshold,
        neighbours=neighbours,  # type: ignore[arg-type]
        quant=quant,
        reproducible_seed=seed,
    )
    inputs = make_inputs(server.setup.quant, ids, seed)
    by_index = {ids[i]: stage for i, stage in (drops or {}).items()}
    return aggregate_in_process(server, clients, inputs, dropouts=by_index), server, inputs


def test_complete_round_without_dropouts() -> None:
    result, server, inputs = one_round(6, threshold=4)
    assert result.n_contributors == 6
    assert result.dropped == []
    assert_sum_within_bound(result, server, inputs)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("neighbours", ["all", 4])
def test_one_dropout_at_each_stage(stage: Stage, neighbours: int | str) -> None:
    threshold = 4 if neighbours == "all" else 3
    result, server, inputs = one_round(8, threshold=threshold, neighbours=neighbours, drops={2: stage})
    contributed = stage == "unmask"
    assert result.n_contributors == (8 if contributed else 7)
    assert (server.setup.participants[2] in result.dropped) is not contributed
    assert_sum_within_bound(result, server, inputs)


def test_dropouts_at_every_stage_in_one_round() -> None:
    drops: dict[int, Stage] = {0: "advertise", 3: "share", 5: "mask", 7: "unmask"}
    result, server, inputs = one_round(12, threshold=6, drops=drops)
    ids = server.setup.participants
    assert result.dropped == sorted([ids[0], ids[3], ids[5]])
    assert result.n_contributors == 9
    assert_sum_within_bound(result, server, inputs)


@pytest.mark.parametrize(("n", "neighbours", "k", "t"), [(24, "all", 23, 13), (60, "auto", 40, 22)])
def test_dropouts_at_every_stage_under_the_security_bound(n: int, neighbours: str, k: int, t: int) -> None:
    """The fault schedule of the Flower tests with the degree and threshold the bound gives (the default
    ``secagg.threshold`` 0.5, raised to it): one dropout per stage completes with the exact sum of the
    survivors; more mask-stage dropouts than a device's neighbourhood tolerates abort before any share
    is asked for, naming the device left with too few holders."""
    ids = [1000 + 7 * i for i in range(n)]
    assert resolve_threshold(0.5, n_participants=n, neighbours=neighbours) == t

    def cohort(seed: int) -> tuple[SecAggServer, dict[int, Any], dict[int, dict[str, np.ndarray]]]:
        server, clients = build_cohort(security=DEFAULT_SECURITY, round_id=seed + 1, participants=ids, threshold=t,
                                       neighbours=neighbours, quant=LAYOUT, reproducible_seed=seed)  # type: ignore[arg-type]
        assert server.setup.k == k
        return server, clients, make_inputs(server.setup.quant, ids, seed)

    server, clients, inputs = cohort(0)
    drops: dict[int, Stage] = {ids[0]: "advertise", ids[1]: "share", ids[2]: "mask", ids[3]: "unmask"}
    result = aggregate_in_process(server, clients, inputs, dropouts=drops)
    assert result.dropped == ids[:3] and result.n_contributors == n - 3
    assert_sum_within_bound(result, server, inputs)

    server, clients, inputs = cohort(1)
    lost = n - t + 1 if neighbours == "all" else n // 2  # the complete graph: too few masked inputs at all
    with pytest.raises(SecAggAbort, match="clients sent masked input" if neighbours == "all"
                       else r"only \d+ surviving holders of node \d+'s self-mask seed shares, threshold t=22"):
        aggregate_in_process(server, clients, inputs, dropouts={node: "mask" for node in ids[:lost]})
    assert server.stage == "aborted"
    with pytest.raises(SecAggAbort):
        server.result()


def test_largest_node_ids_and_64_bit_ring() -> None:
    quant = QuantConfig(segments=(SegmentSpec.symmetric("x", 20, clip=2.0),), bits=64)
    ids = [2**64 - 1, 2**64 - 2, 2**63, 0]
    result, server, inputs = one_round(threshold=2, quant=quant, ids=sorted(ids), drops={1: "mask"})
    assert server.setup.quant.dtype == np.uint64
    assert result.n_contributors == 3
    assert_sum_within_bound(result, server, inputs)


@pytest.mark.parametrize(
    ("drops", "pattern"),
    [
        ({0: "advertise", 1: "advertise", 2: "advertise"}, "3 clients advertised keys, threshold"),
        ({0: "share", 1: "share", 2: "share"}, "3 clients sent shares, threshold"),
        ({0: "mask", 1: "mask", 2: "mask"}, "3 clients sent masked input, threshold"),
        ({0: "unmask", 1: "unmask", 2: "unmask"}, "3 clients answered the unmask request"),
        ({0: "unmask", 1: "unmask"}, "only 3 shares of node"),
    ],
)
def test_too_few_survivors_abort(drops: dict[int, Stage], pattern: str) -> None:
    with pytest.raises(SecAggAbort, match=pattern):
        one_round(6, threshold=4, drops=drops)


def test_abort_is_final() -> None:
    server, clients = build_cohort(
        security=None, round_id=1, participants=[1, 2, 3, 4], threshold=3, neighbours="all", quant=LAYOUT
    )
    with pytest.raises(SecAggAbort, match="1 clients advertised keys"):
        server.collect_keys({1: clients[1].advertise(server.setup)})
    with pytest.raises(SecAggAbort):
        server.collect_shares({})
    with pytest.raises(SecAggAbort):
        server.result()


def test_stage_order_is_enforced() -> None:
    server, _ = build_cohort(
        security=None, round_id=1, participants=[1, 2, 3], threshold=2, neighbours="all", quant=LAYOUT
    )
    with pytest.raises(SecAggProtocolError):
        server.collect_masked({})
    with pytest.raises(SecAggProtocolError):
        server.result()


def test_server_settings_are_validated() -> None:
    kwargs: dict[str, Any] = {"round_id": 1, "participants": [1, 2, 3, 4, 5], "quant": LAYOUT}
    with pytest.raises(SecAggConfigError, match="majority"):
        SecAggServer(security=None, threshold=2, neighbours="all", **kwargs)
    with pytest.raises(SecAggConfigError):
        SecAggServer(security=None, threshold=5, neighbours="all", **kwargs)
    with pytest.raises(SecAggConfigError, match="both odd"):
        SecAggServer(security=None, threshold=2, neighbours=3, **kwargs)
    with pytest.raises(SecAggConfigError):
        SecAggServer(security=None, threshold=2, neighbours=0, **kwargs)
    with pytest.raises(SecAggConfigError):
        SecAggServer(security=None, threshold=2, neighbours="all", graph_seed=b"x", **kwargs)
    tight = QuantConfig(segments=(SegmentSpec.symmetric("x", 2, clip=1.0, scale=2.0**30),))
    with pytest.raises(SecAggConfigError, match="could wrap"):
        SecAggServer(security=None, round_id=1, participants=[1, 2, 3], threshold=2, neighbours="all", quant=tight)
    server = SecAggServer(security=None, threshold=2, neighbours=4, allow_minority_threshold=True, **kwargs)
    assert server.setup.degree is None


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(min_value=2, max_value=12))
    ids = sorted(draw(st.sets(st.integers(0, 2**64 - 1), min_size=n, max_size=n)))
    complete = n <= 3 or draw(st.booleans())
    k = n - 1 if complete else draw(st.integers(min_value=2, max_value=n - 2))
    if k % 2 == 1 and n % 2 == 1:
        k -= 1
    minority = draw(st.booleans())
    threshold = draw(st.integers(min_value=1 if minority else k // 2 + 1, max_value=k))
    stages = st.sampled_from([None, None, None, None, *STAGES])
    drops = {node: stage for node in ids if (stage := draw(stages)) is not None}
    return {
        "ids": ids,
        "neighbours": "all" if complete else k,
        "threshold": threshold,
        "minority": minority,
        "drops": drops,
        "bits": draw(st.sampled_from([32, 64])),
        "length": draw(st.integers(min_value=1, max_value=16)),
        "clip": draw(st.floats(min_value=0.05, max_value=4.0)),
        "seed": draw(st.integers(min_value=0, max_value=2**32)),
    }


def planned(ids: list[int], drops: dict[int, Stage], stage: Stage) -> set[int]:
    return {i for i in ids if i not in drops or STAGES.index(drops[i]) > STAGES.index(stage)}


@settings(deadline=None, max_examples=150)
@given(scenarios())
def test_secure_sum_matches_plain_sum_or_aborts(sc: dict[str, Any]) -> None:
    quant = QuantConfig(
        segments=(
            SegmentSpec.symmetric("a", sc["length"], clip=sc["clip"]),
            SegmentSpec("b", 2, lo=0.0, hi=sc["clip"] * 3),
        ),
        bits=sc["bits"],
    )
    server, clients = build_cohort(
        security=None,
        round_id=sc["seed"],
        participants=sc["ids"],
        threshold=sc["threshold"],
        neighbours=sc["neighbours"],
        quant=quant,
        reproducible_seed=sc["seed"],
        allow_minority_threshold=sc["minority"],
    )
    inputs = make_inputs(server.setup.quant, sc["ids"], sc["seed"])
    t, drops = sc["threshold"], sc["drops"]
    u1, u3, u4 = (planned(sc["ids"], drops, s) for s in ("advertise", "mask", "unmask"))
    must_abort = len(u4) <= t
    try:
        result = aggregate_in_process(server, clients, inputs, dropouts=drops)
    except SecAggAbort:
        event("aborted")
        graph = server.graph  # fixed once the keys are in (empty when the round aborted before)
        assert not (graph and u4 and all(len(graph[i] & u4) >= t for i in u1))
        return
    graph = server.graph
    must_succeed = bool(u4) and all(len(graph[i] & u4) >= t for i in u1)
    event("completed" + (" (guaranteed)" if must_succeed else ""))
    assert not must_abort
    assert set(result.survivors) <= u3
    assert result.n_contributors >= t
    if must_succeed:
        assert set(result.survivors) == u3
        assert all(c.state != "aborted" for c in clients.values())
    assert_sum_within_bound(result, server, inputs)


def drive_to_masked(n: int = 5, threshold: int = 3, seed: int = 4, **kwargs: Any) -> Any:
    ids = [10 + i for i in range(n)]
    server, clients = build_cohort(
        security=None,
        round_id=7,
        participants=ids,
        threshold=threshold,
        neighbours="all",
        quant=LAYOUT,
        reproducible_seed=seed,
        **kwargs,
    )
    inputs = make_inputs(server.setup.quant, ids, seed)
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    routed = server.collect_shares({i: clients[i].share(keys[i]) for i in ids})
    masked = {i: clients[i].mask(routed[i], inputs[i]) for i in ids}
    return server, clients, inputs, masked


def test_invalid_masked_input_is_treated_as_a_dropout() -> None:
    server, clients, inputs, masked = drive_to_masked(n=8, threshold=4)
    bad = masked[11]
    masked[11] = MaskedInput(round_id=7, node_id=11, masked=bad.masked[:-1])
    masked[12] = MaskedInput(round_id=7, node_id=12, masked=bad.masked.astype(np.uint64))
    masked[13] = MaskedInput(round_id=6, node_id=13, masked=bad.masked)
    requests = server.collect_masked(masked)
    assert sorted(requests) == [10, 14, 15, 16, 17]
    assert "expected 18" in server.rejected[11]
    assert "dtype uint64" in server.rejected[12]
    assert "round 6" in server.rejected[13]
    assert requests[10].dropped == (11, 12, 13)
    result = server.collect_unmask({i: clients[i].unmask(requests[i]) for i in requests})
    assert result.dropped == [11, 12, 13]
    assert_sum_within_bound(result, server, inputs)


def test_invalid_reply_is_dropped_and_round_completes() -> None:
    server, clients, inputs, masked = drive_to_masked(n=6, threshold=3)
    masked[12] = MaskedInput(round_id=7, node_id=12, masked=masked[12].masked[:5])
    requests = server.collect_masked(masked)
    assert requests[10].dropped == (12,)
    result = server.collect_unmask({i: clients[i].unmask(requests[i]) for i in requests})
    assert 12 in result.dropped and 12 in result.rejected
    assert result is server.result()
    assert_sum_within_bound(result, server, inputs)


def test_strict_server_raises_on_invalid_reply() -> None:
    server, clients, inputs, masked = drive_to_masked(strict=True)
    masked[11] = MaskedInput(round_id=7, node_id=11, masked=masked[11].masked[:-1])
    with pytest.raises(SecAggMessageError, match="node 11 sent 17 elements"):
        server.collect_masked(masked)
    assert server.stage == "masked"


def test_reply_under_wrong_node_id_or_from_stranger_is_rejected() -> None:
    server, clients, inputs, masked = drive_to_masked(n=6, threshold=3)
    swapped = dict(masked)
    swapped[10], swapped[11] = masked[11], masked[10]
    swapped[99] = masked[12]
    requests = server.collect_masked(swapped)
    assert sorted(requests) == [12, 13, 14, 15]
    assert "claims node 11 but arrived from node 10" in server.rejected[10]
    assert "arrived from node 99" in server.rejected[99]


def test_unmask_response_for_another_split_or_out_of_range_share_is_rejected() -> None:
    server, clients, inputs, masked = drive_to_masked(n=6, threshold=3)
    requests = server.collect_masked(masked)
    answers = {i: clients[i].unmask(requests[i]) for i in requests}
    good = answers[10]
    answers[10] = UnmaskResponse(
        round_id=7,
        node_id=10,
        survivors=good.survivors[:-1],
        seed_shares=good.seed_shares[:-1],
        dropped=(),
        key_shares=(),
    )
    answers[11] = UnmaskResponse(
        round_id=7,
        node_id=11,
        survivors=answers[11].survivors,
        seed_shares=(b"\xff" * ELEMENT_BYTES,) * 5,
        dropped=(),
        key_shares=(),
    )
    result = server.collect_unmask(answers)
    assert "different survivor/dropped split" in server.rejected[10]
    assert "out of range" in server.rejected[11]
    assert result.n_contributors == 6
    assert_sum_within_bound(result, server, inputs)


def test_corrupted_shares_are_detected() -> None:
    server, clients, inputs, masked = drive_to_masked(n=5, threshold=3)
    del masked[14]
    requests = server.collect_masked(masked)
    answers = {i: clients[i].unmask(requests[i]) for i in requests}
    first = answers[10]
    flipped = bytes([first.key_shares[0][0] ^ 1]) + first.key_shares[0][1:]
    answers[10] = UnmaskResponse(
        round_id=7,
        node_id=10,
        survivors=first.survivors,
        seed_shares=first.seed_shares,
        dropped=first.dropped,
        key_shares=(flipped,),
    )
    with pytest.raises(SecAggIntegrityError, match="node 14's mask key"):
        server.collect_unmask(answers)
    assert server.stage == "aborted"


def test_duplicate_public_keys_reject_both_advertisers() -> None:
    server, clients = build_cohort(
        security=None,
        round_id=3,
        participants=[1, 2, 3, 4, 5, 6, 7, 8],
        threshold=4,
        neighbours="all",
        quant=LAYOUT,
        authority=AUTHORITY,
    )
    adv = {i: clients[i].advertise(server.setup) for i in range(1, 9)}
    adv[2] = resign(adv[2], server.setup, c_pk=adv[1].s_pk)
    adv[3] = resign(adv[3], server.setup, s_pk=adv[3].c_pk)
    adv[7] = resign(adv[7], server.setup, s_pk=bytes(32))
    keys = server.collect_keys(adv)
    assert sorted(keys) == [4, 5, 6, 8]
    assert "low-order" in server.rejected[7]
    assert "also advertised" in server.rejected[1]
    assert "two equal public keys" in server.rejected[3]


def test_share_message_with_wrong_receivers_is_rejected() -> None:
    server, clients = build_cohort(
        security=None, round_id=3, participants=[1, 2, 3, 4, 5], threshold=3, neighbours="all", quant=LAYOUT
    )
    ids = [1, 2, 3, 4, 5]
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    shares = {i: clients[i].share(keys[i]) for i in ids}
    s1 = shares[1]
    shares[1] = type(s1)(round_id=3, node_id=1, ids=s1.ids[:-1], ciphertexts=s1.ciphertexts[:-1])
    routed = server.collect_shares(shares)
    assert sorted(routed) == [2, 3, 4, 5]
    assert "expected exactly its 4 live neighbours" in server.rejected[1]
    assert all(1 not in r.senders for r in routed.values())


def test_round_trace_records_costs() -> None:
    ids = [1, 2, 3, 4]
    server, clients = build_cohort(
        security=None,
        round_id=1,
        participants=ids,
        threshold=3,
        neighbours="all",
        quant=LAYOUT,
        reproducible_seed=1,
    )
    trace = RoundTrace()
    aggregate_in_process(server, clients, make_inputs(server.setup.quant, ids, 1), trace=trace)
    assert set(trace.client_seconds) == set(STAGES)
    assert set(trace.server_seconds) == set(STAGES)
    assert trace.up_bytes[1] > 18 * 4 and trace.down_bytes[1] > 0
