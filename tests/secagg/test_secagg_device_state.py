"""Client state as numpy arrays: round trips at every stage, whole rounds across restores."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from secagg_helpers import restore, trust

from fedrec.errors import SecAggAbort, SecAggError
from fedrec.secagg import (
    AggregateResult,
    QuantConfig,
    SecAggClient,
    SecAggServer,
    SecAggStateError,
    SegmentSpec,
    UnmaskRequest,
    clear_state,
)
from fedrec.secagg.device_state import (
    PREFIX,
    ClientSnapshot,
    decode,
    drop_round,
    encode,
    last_round,
    live_rounds,
    load_round,
    pack,
    round_key,
    store_round,
    stored_round,
    stored_stage,
    unpack,
)
from fedrec.secagg.inprocess import STAGES, Stage, aggregate_in_process, build_cohort

LAYOUT = QuantConfig(
    segments=(
        SegmentSpec.symmetric("emb", 12, clip=1.0),
        SegmentSpec.symmetric("bias", 3, clip=0.5),
        SegmentSpec("count", 3, lo=0.0, hi=4.0),
    )
)
IDS = [5, 17, 2**64 - 1, 40, 2**63]


def make_inputs(quant: QuantConfig, ids: list[int], seed: int) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {node: {s.name: rng.uniform(s.lo - 1.0, s.hi + 1.0, s.length) for s in quant.segments} for node in ids}


def through_storage(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What another process reads back: every array saved and loaded (no pickles)."""
    out = {}
    for key, value in state.items():
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        buffer.seek(0)
        out[key] = np.load(buffer, allow_pickle=False)
    return out


def assert_same_state(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key


def assert_round_trips(client: SecAggClient) -> dict[str, np.ndarray]:
    state = client.to_state()
    assert state and all(key.startswith(PREFIX) for key in state)
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "uf" for v in state.values())
    restored = restore(through_storage(state))
    assert restored.node_id == client.node_id
    assert restored.state == client.state
    assert restored.neighbours == client.neighbours
    assert_same_state(restored.to_state(), state)
    return state


def staged_cohort(seed: int = 3) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    ids = sorted(IDS)
    return build_cohort(
        security=None, round_id=9, participants=ids, threshold=3, neighbours="all", quant=LAYOUT, reproducible_seed=seed
    )


def test_round_trip_at_every_stage() -> None:
    server, clients = staged_cohort()
    ids = list(server.setup.participants)
    inputs = make_inputs(server.setup.quant, ids, 1)
    seen: dict[str, set[str]] = {}

    def snapshot_all() -> None:
        for client in clients.values():
            seen.setdefault(client.state, set()).update(assert_round_trips(client))

    snapshot_all()
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    snapshot_all()
    routed = server.collect_shares({i: clients[i].share(keys[i]) for i in ids})
    snapshot_all()
    masked = {i: clients[i].mask(routed[i], inputs[i]) for i in ids[:-1]}
    snapshot_all()
    requests = server.collect_masked(masked)
    answers = {i: clients[i].unmask(requests[i]) for i in requests}
    snapshot_all()
    server.collect_unmask(answers)
    assert set(seen) == {"new", "advertised", "shared", "masked", "done"}
    assert {PREFIX + k for k in ("c_sk", "s_sk", "seed")} <= seen["advertised"]
    assert PREFIX + "c_sk" not in seen["shared"] and PREFIX + "share_keys" in seen["shared"]
    assert PREFIX + "seed" not in seen["masked"] and PREFIX + "held" in seen["masked"]
    assert PREFIX + "held" not in seen["done"] and PREFIX + "answer.seed_shares" in seen["done"]
    assert PREFIX + "round_id" not in seen["new"]


def test_aborted_client_round_trips_without_secrets() -> None:
    server, clients = staged_cohort()
    client = clients[5]
    client.advertise(server.setup)
    bad = UnmaskRequest(round_id=9, node_id=5, survivors=(17,), dropped=())
    with pytest.raises(SecAggError):
        client.share(bad.to_dict())
    assert client.state == "aborted"
    state = assert_round_trips(client)
    assert not {PREFIX + k for k in ("c_sk", "s_sk", "seed", "share_keys", "held")} & set(state)
    fresh = SecAggClient(node_id=8, trust=trust(8))
    with pytest.raises(SecAggError):
        fresh.advertise({"round_id": 1})
    assert "round_id" not in {k[len(PREFIX) :] for k in assert_round_trips(fresh)}


def test_restored_done_client_keeps_the_refuse_twice_rule() -> None:
    server, clients = staged_cohort()
    ids = list(server.setup.participants)
    inputs = make_inputs(server.setup.quant, ids, 2)
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    routed = server.collect_shares({i: clients[i].share(keys[i]) for i in ids})
    masked = {i: clients[i].mask(routed[i], inputs[i]) for i in ids}
    requests = server.collect_masked(masked)
    node = ids[0]
    answer = clients[node].unmask(requests[node])
    restored = restore(through_storage(clients[node].to_state()))
    assert restored.unmask(requests[node]).to_dict() == answer.to_dict()
    other = UnmaskRequest(
        round_id=9, node_id=node, survivors=requests[node].survivors[:-1], dropped=requests[node].survivors[-1:]
    )
    with pytest.raises(SecAggError, match="already answered a different"):
        restore(clients[node].to_state()).unmask(other)


def test_masked_restored_client_refuses_a_split_it_cannot_serve() -> None:
    server, clients = staged_cohort()
    ids = list(server.setup.participants)
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    routed = server.collect_shares({i: clients[i].share(keys[i]) for i in ids})
    node = ids[1]
    clients[node].mask(routed[node], make_inputs(server.setup.quant, [node], 0)[node])
    restored = restore(clients[node].to_state())
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        restored.unmask(UnmaskRequest(round_id=9, node_id=node, survivors=(ids[0], ids[2], ids[3]), dropped=(ids[0],)))


def test_snapshot_and_client_reprs_hide_secrets() -> None:
    server, clients = staged_cohort()
    client = clients[5]
    client.advertise(server.setup)
    state = client.to_state()
    snap = decode(state)
    assert snap.seed is not None and snap.c_sk is not None
    text = repr(snap) + str(snap) + repr(restore(state))
    for secret in (snap.seed, snap.c_sk, snap.s_sk):
        assert secret is not None and secret.hex() not in text
    assert "redacted" in text


# -- state mapping housekeeping ----------------------------------------------


def test_clear_state_touches_only_secagg_keys() -> None:
    server, clients = staged_cohort()
    clients[5].advertise(server.setup)
    state: dict[str, np.ndarray] = {
        "user.1.factor": np.ones(3, np.float32),
        PREFIX + "last_round": np.array([9], np.uint64),
    }
    store_round(state, 9, clients[5].to_state())
    assert stored_round(state) == 9 and stored_stage(state) == "advertised" and last_round(state) == 9
    clear_state(state)
    assert set(state) == {"user.1.factor", PREFIX + "last_round"}
    assert stored_round(state) is None and stored_stage(state) is None and last_round(state) == 9
    clear_state(state, forget_round=True)
    assert set(state) == {"user.1.factor"}
    assert last_round(state) is None


def corrupt_cases() -> list[tuple[str, Callable[[dict[str, np.ndarray]], None], str]]:
    def drop(key: str) -> Callable[[dict[str, np.ndarray]], None]:
        return lambda s: s.__delitem__(PREFIX + key)

    def put(key: str, value: Any) -> Callable[[dict[str, np.ndarray]], None]:
        return lambda s: s.__setitem__(PREFIX + key, value)

    return [
        ("missing seed", drop("seed"), "'secagg.seed' is missing"),
        ("missing node", drop("node_id"), "no secure-aggregation client"),
        ("wrong dtype", put("participants", np.array([1, 2], np.int64)), "dtype int64"),
        ("wrong shape", put("mask_seeds", np.zeros((1, 31), np.uint8)), "shape"),
        ("version", put("format", np.array([7], np.uint8)), "layout version 7"),
        ("stage code", put("stage", np.array([9], np.uint8)), "unknown stage code"),
        ("not an array", put("threshold", [3]), "not a numpy array"),
        ("bad setup", put("threshold", np.array([99], np.uint64)), "stored setup is invalid"),
        ("bad name", put("quant.names", np.full(12, 0xFF, np.uint8)), "stored setup is invalid"),
    ]


@pytest.mark.parametrize(("label", "corrupt", "pattern"), corrupt_cases())
def test_corrupted_state_is_refused(label: str, corrupt: Callable[[dict[str, np.ndarray]], None], pattern: str) -> None:
    server, clients = staged_cohort()
    ids = list(server.setup.participants)
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    clients[5].share(keys[5])
    state = clients[5].to_state()
    corrupt(state)
    with pytest.raises(SecAggStateError, match=pattern):
        restore(state)


def test_held_share_outside_the_field_is_refused() -> None:
    server, clients = staged_cohort()
    ids = list(server.setup.participants)
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    routed = server.collect_shares({i: clients[i].share(keys[i]) for i in ids})
    clients[5].mask(routed[5], make_inputs(server.setup.quant, [5], 0)[5])
    state = clients[5].to_state()
    state[PREFIX + "held"] = np.full_like(state[PREFIX + "held"], 0xFF)
    with pytest.raises(SecAggStateError, match="outside the field"):
        restore(state)


def test_encode_refuses_mismatched_peer_tables() -> None:
    snap = ClientSnapshot(node_id=1, stage="shared", share_keys={2: bytes(32)}, mask_seeds={3: bytes(32)})
    with pytest.raises(SecAggStateError, match="different peers"):
        encode(snap)


# -- whole rounds with every client restored between stages --------------------


def reference_cohort(
    sc: dict[str, Any], quant: QuantConfig
) -> tuple[SecAggServer, dict[int, tuple[np.random.Generator, Callable[[int], bytes]]]]:
    server = SecAggServer(
        security=None,
        round_id=sc["seed"],
        participants=sc["ids"],
        threshold=sc["threshold"],
        neighbours=sc["neighbours"],
        quant=quant,
        graph_seed=np.random.default_rng([sc["seed"], 0]).bytes(32),
        allow_minority_threshold=sc["minority"],
    )
    sources: dict[int, tuple[np.random.Generator, Callable[[int], bytes]]] = {
        node: (np.random.default_rng([sc["seed"], node]), np.random.default_rng([sc["seed"], node + 1]).bytes)
        for node in sc["ids"]
    }
    return server, sources


def restored_round(
    server: SecAggServer,
    sources: Mapping[int, tuple[np.random.Generator, Callable[[int], bytes]]],
    inputs: Mapping[int, Mapping[str, np.ndarray]],
    drops: Mapping[int, Stage],
    minority: bool,
) -> AggregateResult:
    """aggregate_in_process, except that no client object outlives a stage: only its state arrays do."""
    states: dict[int, dict[str, np.ndarray]] = {}
    for node in server.setup.participants:
        rng, randbytes = sources[node]
        client = SecAggClient(
            node_id=node, trust=trust(node), rng=rng, randbytes=randbytes, allow_minority_threshold=minority
        )
        states[node] = through_storage(client.to_state())

    def stage(name: Stage, inbox: Mapping[int, Any], call: Callable[[SecAggClient, Any], Any]) -> dict[int, Any]:
        replies = {}
        for node, message in inbox.items():
            if node in drops and STAGES.index(drops[node]) <= STAGES.index(name):
                continue
            rng, randbytes = sources[node]
            client = restore(states[node], rng=rng, randbytes=randbytes)
            try:
                replies[node] = call(client, message.to_dict())
            except SecAggError:
                continue
            finally:
                states[node] = through_storage(client.to_state())
        return replies

    adv = stage("advertise", server.setup_messages(), SecAggClient.advertise)
    keys = server.collect_keys(adv)
    shr = stage("share", keys, SecAggClient.share)
    routed = server.collect_shares(shr)
    masked = stage("mask", routed, lambda c, m: c.mask(m, inputs[c.node_id]))
    requests = server.collect_masked(masked)
    answers = stage("unmask", requests, SecAggClient.unmask)
    return server.collect_unmask(answers)


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(min_value=2, max_value=10))
    ids = sorted(draw(st.sets(st.integers(0, 2**64 - 1), min_size=n, max_size=n)))
    complete = n <= 3 or draw(st.booleans())
    k = n - 1 if complete else draw(st.integers(min_value=2, max_value=n - 2))
    if k % 2 == 1 and n % 2 == 1:
        k -= 1
    minority = draw(st.booleans())
    threshold = draw(st.integers(min_value=1 if minority else k // 2 + 1, max_value=k))
    stages = st.sampled_from([None, None, None, *STAGES])
    drops = {node: stage for node in ids if (stage := draw(stages)) is not None}
    return {
        "ids": ids,
        "neighbours": "all" if complete else k,
        "threshold": threshold,
        "minority": minority,
        "drops": drops,
        "bits": draw(st.sampled_from([32, 64])),
        "seed": draw(st.integers(min_value=0, max_value=2**32)),
    }


@settings(deadline=None, max_examples=60)
@given(scenarios())
def test_round_with_every_client_restored_between_stages_matches_run_round(sc: dict[str, Any]) -> None:
    quant = QuantConfig(
        segments=(SegmentSpec.symmetric("a", 9, clip=1.5), SegmentSpec("b", 2, lo=0.0, hi=3.0)), bits=sc["bits"]
    )
    outcomes: list[AggregateResult | str] = []
    for reload in (False, True):
        server, sources = reference_cohort(sc, quant)
        inputs = make_inputs(server.setup.quant, sc["ids"], sc["seed"])
        try:
            if reload:
                result = restored_round(server, sources, inputs, sc["drops"], sc["minority"])
            else:
                clients = {
                    node: SecAggClient(
                        node_id=node,
                        trust=trust(node),
                        rng=rng,
                        randbytes=randbytes,
                        allow_minority_threshold=sc["minority"],
                    )
                    for node, (rng, randbytes) in sources.items()
                }
                result = aggregate_in_process(server, clients, inputs, dropouts=sc["drops"])
        except SecAggAbort as exc:
            outcomes.append(str(exc))
            continue
        outcomes.append(result)
    a, b = outcomes
    event("aborted" if isinstance(a, str) else "completed")
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert a.survivors == b.survivors and a.dropped == b.dropped
    for name in a.sums:
        assert np.array_equal(a.sums[name], b.sums[name])


# -- rounds in the device mapping: one packed array per round ------------------


def test_each_round_is_one_packed_array_that_round_trips() -> None:
    server, clients = staged_cohort()
    ids = list(server.setup.participants)
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    clients[5].share(keys[5])
    snapshot = clients[5].to_state()
    state: dict[str, np.ndarray] = {"user.1.factor": np.ones(3, np.float32)}
    store_round(state, 9, snapshot)
    store_round(state, 11, SecAggClient(node_id=5, trust=trust(5)).to_state())
    assert set(state) == {"user.1.factor", round_key(9), round_key(11)}
    assert all(state[round_key(r)].dtype == np.uint8 and state[round_key(r)].ndim == 1 for r in (9, 11))
    assert live_rounds(through_storage(state)) == [9, 11]
    restored = load_round(through_storage(state), 9)
    assert_same_state(restored, {k: v for k, v in snapshot.items() if k != PREFIX + "last_round"})
    assert restore(restored).state == "shared"
    drop_round(state, 9)
    assert live_rounds(state) == [11] and load_round(state, 9) == {}


@settings(deadline=None, max_examples=60)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.tuples(st.sampled_from([np.uint8, np.uint64, np.float64]), st.lists(st.integers(0, 4), max_size=3)),
        max_size=6,
    )
)
def test_pack_round_trips_any_named_arrays(spec: dict[str, tuple[Any, list[int]]]) -> None:
    rng = np.random.default_rng(0)
    arrays = {name: (rng.random(shape) * 200).astype(dtype) for name, (dtype, shape) in spec.items()}
    back = unpack(through_storage({"x": pack(arrays)})["x"])
    assert_same_state(back, arrays)


def packed(header: bytes, body: bytes = b"", *, size: int | None = None) -> np.ndarray:
    prefix = (len(header) if size is None else size).to_bytes(4, "big")
    return np.frombuffer(prefix + header + body, np.uint8)


@pytest.mark.parametrize(
    ("blob", "pattern"),
    [
        (np.zeros(3, np.int64), "1-D uint8"),
        (packed(b"[1,2]", size=9), "shorter than its header"),
        (packed(b"[1,"), "unreadable header"),
        (packed(b'{"a":1}'), "unreadable header"),
        (packed(b'[["a","|u1"]]'), "malformed entry"),
        (packed(b'[["a","<i8",[1]]]', bytes(8)), "malformed entry"),
        (packed(b'[["a","|u1",[-1]]]'), "malformed entry"),
        (packed(b'[["a","|u1",[4]]]', bytes(3)), "runs past the end"),
        (packed(b'[["a","|u1",[2]]]', bytes(3)), "trailing bytes"),
    ],
)
def test_malformed_packed_rounds_are_refused(blob: np.ndarray, pattern: str) -> None:
    with pytest.raises(SecAggStateError, match=pattern):
        unpack(blob)
    with pytest.raises(SecAggStateError):
        pack({"a": np.zeros(2, np.int32)})
