"""What an honest client refuses, what the server learns, what never leaks."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest
from secagg_helpers import AUTHORITY, digest_of, resign, trust

from fedrec.errors import SecAggError
from fedrec.secagg import (
    PeerKeys,
    QuantConfig,
    RoutedShares,
    SecAggClient,
    SecAggConfigError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggProtocolError,
    SegmentSpec,
    Setup,
    UnmaskRequest,
)
from fedrec.secagg.crypto.shamir import element_from_bytes
from fedrec.secagg.inprocess import aggregate_in_process, build_cohort

LAYOUT = QuantConfig(
    segments=(
        SegmentSpec.symmetric("emb", 20_000, clip=1.0),
        SegmentSpec("count", 100, lo=0.0, hi=8.0),
    )
)
SMALL = QuantConfig(segments=(SegmentSpec.symmetric("x", 8, clip=1.0),))
IDS = [101, 202, 303, 404, 505]


def chi_square_p_value(data: bytes) -> float:
    """Upper-tail p-value of the byte histogram against uniform (Wilson-Hilferty)."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    expected = len(data) / 256
    statistic = float(((counts - expected) ** 2 / expected).sum())
    dof = 255
    z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def realistic_inputs(quant: QuantConfig, ids: list[int]) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(99)
    return {
        node: {
            "emb": (0.01 * rng.standard_normal(20_000)).astype(np.float32),
            "count": rng.integers(0, 3, 100).astype(np.float32),
        }
        for node in ids
    }


def staged(
    ids: list[int] = IDS,
    threshold: int = 3,
    quant: QuantConfig = SMALL,
    round_id: int = 7,
    seed: int = 5,
    **kwargs: Any,
) -> tuple[Any, dict[int, SecAggClient], dict[int, PeerKeys], dict[int, RoutedShares]]:
    server, clients = build_cohort(
        security=None,
        round_id=round_id,
        participants=ids,
        threshold=threshold,
        neighbours="all",
        quant=quant,
        reproducible_seed=seed,
        **kwargs,
    )
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    routed = server.collect_shares({i: clients[i].share(keys[i]) for i in ids})
    return server, clients, keys, routed


def masked_all(clients: dict[int, SecAggClient], routed: dict[int, RoutedShares]) -> None:
    for node, client in clients.items():
        client.mask(routed[node], {"x": np.zeros(8)})


# -- what the server sees -------------------------------------------------


def test_masked_vector_is_indistinguishable_from_uniform() -> None:
    server, clients, _, routed = staged(quant=LAYOUT)
    inputs = realistic_inputs(server.setup.quant, IDS)
    node = IDS[2]
    masked = clients[node].mask(routed[node], inputs[node]).masked
    assert chi_square_p_value(masked.tobytes()) > 1e-4


def test_chi_square_detects_an_unmasked_vector() -> None:
    from fedrec.secagg.quantize import quantize

    quant = LAYOUT.resolve(len(IDS))
    inputs = realistic_inputs(quant, IDS)
    plain = quantize(inputs[IDS[2]], quant, rng=np.random.default_rng(0))
    assert chi_square_p_value(plain.tobytes()) < 1e-4
    # A vector with only half its bytes random is also caught.
    mixed = plain.copy()
    mixed[::2] = np.random.default_rng(1).integers(0, 2**32, mixed[::2].shape, dtype=np.uint32)
    assert chi_square_p_value(mixed.tobytes()) < 1e-4


# -- share ciphertexts ----------------------------------------------------


def test_tampered_ciphertext_is_rejected_and_aborts_the_client() -> None:
    _, clients, _, routed = staged()
    node = IDS[0]
    original = routed[node]
    tampered = list(original.ciphertexts)
    tampered[1] = tampered[1][:-1] + bytes([tampered[1][-1] ^ 0x80])
    bad = RoutedShares(round_id=7, node_id=node, ids=original.ids, ciphertexts=tuple(tampered))
    with pytest.raises(SecAggIntegrityError, match="failed authentication"):
        clients[node].mask(bad, {"x": np.zeros(8)})
    assert clients[node].state == "aborted"
    with pytest.raises(SecAggProtocolError, match="state 'aborted'"):
        clients[node].mask(original, {"x": np.zeros(8)})


def test_ciphertext_replayed_from_another_round_is_rejected() -> None:
    _, _, _, old_routed = staged(round_id=7, seed=5)
    _, clients, _, routed = staged(round_id=8, seed=5)
    node = IDS[0]
    replay = RoutedShares(round_id=8, node_id=node, ids=old_routed[node].ids, ciphertexts=old_routed[node].ciphertexts)
    with pytest.raises(SecAggIntegrityError):
        clients[node].mask(replay, {"x": np.zeros(8)})
    _, clients, _, routed = staged(round_id=8, seed=5)
    with pytest.raises(SecAggMessageError, match="round 7, this round is 8"):
        clients[node].mask(old_routed[node], {"x": np.zeros(8)})


def test_misrouted_ciphertext_is_rejected() -> None:
    _, clients, _, routed = staged()
    alice, bob, carol = IDS[0], IDS[1], IDS[2]
    for_bob = routed[bob].as_mapping()[carol]
    mapping = routed[alice].as_mapping()
    mapping[carol] = for_bob
    misrouted = RoutedShares.from_mapping(round_id=7, node_id=alice, ciphertexts=mapping)
    with pytest.raises(SecAggIntegrityError):
        clients[alice].mask(misrouted, {"x": np.zeros(8)})
    _, clients, _, routed = staged()
    with pytest.raises(SecAggMessageError, match=f"addressed to node {bob}"):
        clients[alice].mask(routed[bob], {"x": np.zeros(8)})


def test_shares_from_unknown_or_too_few_senders_are_refused() -> None:
    _, clients, _, routed = staged()
    node = IDS[0]
    stranger = RoutedShares(round_id=7, node_id=node, ids=(999,), ciphertexts=routed[node].ciphertexts[:1])
    with pytest.raises(SecAggMessageError, match="not peers"):
        clients[node].mask(stranger, {"x": np.zeros(8)})
    _, clients, _, routed = staged()
    few = RoutedShares(round_id=7, node_id=node, ids=routed[node].ids[:2], ciphertexts=routed[node].ciphertexts[:2])
    with pytest.raises(SecAggProtocolError, match="only 2 neighbours sent shares"):
        clients[node].mask(few, {"x": np.zeros(8)})


# -- unmask requests ------------------------------------------------------


def test_peer_in_both_sets_is_refused() -> None:
    server, clients, _, routed = staged()
    masked_all(clients, routed)
    node = IDS[0]
    peers = tuple(p for p in IDS if p != node)
    request = UnmaskRequest(round_id=7, node_id=node, survivors=peers, dropped=(peers[0],))
    with pytest.raises(SecAggProtocolError, match="both survivor and dropped"):
        clients[node].unmask(request)
    assert clients[node].state == "aborted"


def test_second_request_with_another_split_is_refused() -> None:
    _, clients, _, routed = staged()
    masked_all(clients, routed)
    node = IDS[0]
    peers = tuple(p for p in IDS if p != node)
    first = UnmaskRequest(round_id=7, node_id=node, survivors=peers, dropped=())
    answer = clients[node].unmask(first)
    assert clients[node].state == "done"
    assert clients[node].unmask(first) is answer
    second = UnmaskRequest(round_id=7, node_id=node, survivors=peers[1:], dropped=peers[:1])
    with pytest.raises(SecAggProtocolError, match="already answered a different"):
        clients[node].unmask(second)
    with pytest.raises(SecAggProtocolError):
        clients[node].unmask(first)


def test_too_few_survivors_or_unknown_peers_are_refused() -> None:
    _, clients, _, routed = staged()
    masked_all(clients, routed)
    a, b, c = IDS[0], IDS[1], IDS[2]
    few = UnmaskRequest(round_id=7, node_id=a, survivors=IDS[1:3], dropped=tuple(IDS[3:]))
    with pytest.raises(SecAggProtocolError, match="2 survivors claimed, threshold is 3"):
        clients[a].unmask(few)
    unknown = UnmaskRequest(round_id=7, node_id=b, survivors=(a, c, 999), dropped=())
    with pytest.raises(SecAggProtocolError, match="holds no shares of nodes \\[999\\]"):
        clients[b].unmask(unknown)
    own = UnmaskRequest(round_id=7, node_id=c, survivors=(a, b, c), dropped=())
    with pytest.raises(SecAggProtocolError, match=f"holds no shares of nodes \\[{c}\\]"):
        clients[c].unmask(own)


def test_unmask_before_masking_is_refused() -> None:
    _, clients, _, _ = staged()
    request = UnmaskRequest(round_id=7, node_id=IDS[0], survivors=tuple(IDS[1:]), dropped=())
    with pytest.raises(SecAggProtocolError, match="state 'shared'"):
        clients[IDS[0]].unmask(request)


# -- keys and setup -------------------------------------------------------


def advertised(threshold: int = 3) -> tuple[Setup, dict[int, SecAggClient], dict[int, Any]]:
    server, clients = build_cohort(
        security=None,
        round_id=7,
        participants=IDS,
        threshold=threshold,
        neighbours="all",
        quant=SMALL,
        reproducible_seed=1,
        authority=AUTHORITY,
    )
    adv = {i: clients[i].advertise(server.setup) for i in IDS}
    return server.setup, clients, adv


def peer_keys(node: int, adv: dict[int, Any], setup: Setup, **override: Any) -> PeerKeys:
    """Node ``node``'s PeerKeys as an honest server builds it from ``adv`` (complete graph), then ``override``."""
    advertisers = tuple(sorted(adv))
    peers = tuple(p for p in advertisers if p != node)
    fields: dict[str, Any] = {
        "round_id": 7,
        "node_id": node,
        "peers": peers,
        "c_pks": tuple(adv[p].c_pk for p in peers),
        "s_pks": tuple(adv[p].s_pk for p in peers),
        "certificates": tuple(adv[p].certificate for p in peers),
        "signatures": tuple(adv[p].signature for p in peers),
        "advertisers": advertisers,
        "digests": tuple(digest_of(adv[p], setup) for p in advertisers),
    }
    fields.update(override)
    return PeerKeys(**fields)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("equal", "two equal public keys"),
        ("own", "reuses this node's public key"),
        ("repeat", "repeats another node's public key"),
        ("stranger", "not neighbours"),
        ("few", "only 2 neighbours left"),
        ("round", "round 8"),
        ("zero", "low-order"),
        ("zero_s", "low-order"),
    ],
)
def test_bad_peer_keys_are_refused(override: str, pattern: str) -> None:
    setup, clients, adv = advertised()
    node, peers = IDS[0], tuple(IDS[1:])
    c_pks = [adv[p].c_pk for p in peers]
    s_pks = [adv[p].s_pk for p in peers]
    changes: dict[str, Any] = {}
    if override == "equal":
        s_pks[1] = c_pks[1]
    elif override == "own":
        c_pks[2] = adv[node].s_pk
    elif override == "repeat":
        s_pks[3] = c_pks[0]
    elif override == "stranger":
        changes["peers"] = (*peers[:-1], 12345)
    elif override == "round":
        changes["round_id"] = 8
    if override == "few":
        adv = {p: adv[p] for p in (node, *peers[:2])}
    elif override in ("zero", "zero_s"):  # a peer that signed a low-order key itself
        victim = peers[0] if override == "zero" else peers[2]
        adv = dict(adv)
        adv[victim] = resign(adv[victim], setup, **({"c_pk": bytes(32)} if override == "zero" else {"s_pk": bytes(32)}))
    else:
        changes.setdefault("c_pks", tuple(c_pks))
        changes.setdefault("s_pks", tuple(s_pks))
    with pytest.raises(SecAggError, match=pattern):
        clients[node].share(peer_keys(node, adv, setup, **changes))
    assert clients[node].state == "aborted"


def test_client_refuses_a_minority_threshold_and_foreign_setup() -> None:
    setup, _, _ = advertised()
    weak = Setup(
        round_id=7,
        participants=tuple(IDS),
        threshold=2,
        degree=None,
        graph_seed=setup.graph_seed,
        quant=setup.quant,
    )
    with pytest.raises(SecAggConfigError, match="majority"):
        SecAggClient(node_id=IDS[0], trust=trust(IDS[0])).advertise(weak)
    SecAggClient(node_id=IDS[0], trust=trust(IDS[0]), allow_minority_threshold=True).advertise(weak)
    with pytest.raises(SecAggMessageError, match="not a participant"):
        SecAggClient(node_id=7, trust=trust(7)).advertise(setup)
    client = SecAggClient(node_id=IDS[0], trust=trust(IDS[0]))
    client.advertise(setup.to_dict())
    with pytest.raises(SecAggProtocolError, match="advertise called in state 'advertised'"):
        client.advertise(setup)
    with pytest.raises(SecAggMessageError):
        SecAggClient(node_id=-1, trust=trust(-1))


def test_bad_input_vector_is_rejected_without_aborting() -> None:
    _, clients, _, routed = staged()
    client = clients[IDS[0]]
    for bad, pattern in [
        ({"x": np.zeros(7)}, "shape"),
        ({"x": np.array([0, 0, 0, np.nan, 0, 0, 0, 0])}, "non-finite value at index 3"),
        ({"x": np.zeros(8, dtype=complex)}, "not real"),
        ({"y": np.zeros(8)}, "missing"),
        ({"x": [0.0] * 8}, "numpy array"),
    ]:
        with pytest.raises(SecAggMessageError, match=pattern):
            client.mask(routed[IDS[0]], bad)  # type: ignore[arg-type]
    assert client.state == "shared"
    out = client.mask(routed[IDS[0]], np.full(8, 5.0))
    assert out.masked.dtype == np.uint32 and out.masked.shape == (8,)


# -- secrets never leak ---------------------------------------------------


def secret_texts(values: list[bytes | int]) -> list[str]:
    out = []
    for value in values:
        if isinstance(value, bytes):
            out += [value.hex(), repr(value)[2:-1], str(int.from_bytes(value, "big"))]
        else:
            out += [str(value), hex(value)[2:]]
    return out


def test_secrets_never_appear_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ids = [11, 22, 33, 44, 55, 66]
    server, clients = build_cohort(
        security=None,
        round_id=4,
        participants=ids,
        threshold=3,
        neighbours="all",
        quant=SMALL,
        reproducible_seed=3,
    )
    inputs = {i: {"x": np.linspace(-1, 1, 8)} for i in ids}
    secrets: list[bytes | int] = []
    messages: list[Any] = []
    keys = server.collect_keys({i: clients[i].advertise(server.setup) for i in ids})
    for client in clients.values():
        secrets += [client._seed, client._c_key.private_bytes(), client._s_key.private_bytes()]  # type: ignore[union-attr]
    shares = {i: clients[i].share(keys[i]) for i in ids}
    secrets += [k for c in clients.values() for k in c._share_keys.values()]
    secrets += [k for c in clients.values() for k in c._mask_seeds.values()]
    routed = server.collect_shares(shares)
    masked = {i: clients[i].mask(routed[i], inputs[i]) for i in ids if i != 66}
    secrets += [s for c in clients.values() for pair in c._held.values() for s in pair]
    requests = server.collect_masked(masked)
    answers = {i: clients[i].unmask(requests[i]) for i in requests}
    for answer in answers.values():
        secrets += [element_from_bytes(s) for s in answer.seed_shares + answer.key_shares]
    with pytest.raises(SecAggProtocolError):
        clients[11].unmask(UnmaskRequest(round_id=4, node_id=11, survivors=(22, 33, 44), dropped=(55, 66)))
    result = server.collect_unmask(answers)
    messages += [*keys.values(), *shares.values(), *routed.values(), *masked.values()]
    messages += [*requests.values(), *answers.values(), server, result, *clients.values()]
    reprs = "\n".join(repr(m) + str(m) for m in messages)
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "refused unmask" in caplog.text
    assert len(secrets) > 100
    for text in secret_texts(secrets):
        assert text not in logs
        assert text not in reprs


def test_secrets_are_dropped_after_masking() -> None:
    ids = [1, 2, 3]
    server, clients = build_cohort(
        security=None, round_id=1, participants=ids, threshold=2, neighbours="all", quant=SMALL
    )
    aggregate_in_process(server, clients, {i: {"x": np.zeros(8)} for i in ids})
    for client in clients.values():
        assert client._seed is None and client._s_key is None and client._c_key is None
        assert not client._share_keys and not client._mask_seeds
