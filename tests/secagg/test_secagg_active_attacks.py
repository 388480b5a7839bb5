"""A server that cheats, mounted against the real device and server code: every attack fails.

Each test plays the server (or a share holder) of issue 10's attacks with the
production classes and asserts the typed refusal, or that what the server
gets is useless: key substitution, a degree or threshold below the bound, a
graph or setup the server biased or split, different tables to different
devices, and a shifted share.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from secagg_helpers import AUTHORITY, trust

from fedrec.errors import (
    SecAggInconsistentShareError,
    SecAggIntegrityError,
    SecAggMessageError,
    SecAggSecurityError,
)
from fedrec.secagg import (
    DEFAULT_SECURITY,
    PeerKeys,
    QuantConfig,
    SecAggClient,
    SecAggServer,
    SegmentSpec,
    Setup,
    aggregate_in_process,
    build_cohort,
    neighbourhood_degree,
    resolve_threshold,
    secure_degree,
)
from fedrec.secagg.crypto.identity import Authority, SimulationAuthority
from fedrec.secagg.crypto.keys import KeyPair
from fedrec.secagg.crypto.shamir import PRIME, element_from_bytes, element_to_bytes, inverse
from fedrec.secagg.graph import min_threshold
from fedrec.secagg.layout import model_digest
from fedrec.secagg.messages import setup_digest

IDS = list(range(1, 13))
QUANT = QuantConfig(segments=(SegmentSpec.symmetric("x", 64, clip=1.0), SegmentSpec("n", 4, lo=0.0, hi=1.0)))


def cohort(**kwargs: Any) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    """12 devices under the default security bound (the complete graph at this size, t a majority)."""
    t = resolve_threshold(0.5, n_participants=len(IDS), neighbours="auto")
    return build_cohort(round_id=4, participants=IDS, threshold=t, neighbours="auto", quant=QUANT.resolve(len(IDS)),
                        authority=AUTHORITY, security=DEFAULT_SECURITY, **kwargs)


def inputs(seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {i: {"x": rng.uniform(-0.5, 0.5, 64), "n": rng.integers(0, 2, 4).astype(float)} for i in IDS}


def keys_round() -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, PeerKeys]]:
    server, clients = cohort()
    adverts = {i: clients[i].advertise(server.setup) for i in IDS}
    return server, clients, server.collect_keys(adverts)


# -- key substitution ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["c_pks", "s_pks", "both"])
def test_server_substituting_a_neighbours_keys_is_refused_before_any_share(what: str) -> None:
    server, clients, keys = keys_round()
    victim, target = IDS[0], keys[IDS[0]].peers[2]
    mine = {f: KeyPair.generate(np.random.default_rng(i).bytes) for i, f in enumerate(("c_pks", "s_pks"))}
    msg = keys[victim]
    at = msg.peers.index(target)
    changes = {}
    for field in (("c_pks", "s_pks") if what == "both" else (what,)):
        values = list(getattr(msg, field))
        values[at] = mine[field].public
        changes[field] = tuple(values)
    with pytest.raises(SecAggIntegrityError, match=f"node {target} refused: .*signature does not verify"):
        clients[victim].share(replace(msg, **changes))
    assert clients[victim].state == "aborted"


def test_server_certifying_its_own_keys_is_refused() -> None:
    """The server enrols a fake device with an authority of its own: its certificate does not verify."""
    server, clients, keys = keys_round()
    victim = IDS[0]
    msg = keys[victim]
    fake = Authority.generate().enrol(msg.peers[0])
    c, s = KeyPair.generate(np.random.default_rng(2).bytes), KeyPair.generate(np.random.default_rng(3).bytes)
    sig = fake.sign_advert(round_id=4, node_id=msg.peers[0], c_pk=c.public, s_pk=s.public,
                           setup_digest=bytes(32))
    forged = replace(msg, c_pks=(c.public, *msg.c_pks[1:]), s_pks=(s.public, *msg.s_pks[1:]),
                     certificates=(fake.certificate.to_bytes(), *msg.certificates[1:]),
                     signatures=(sig, *msg.signatures[1:]))
    with pytest.raises(SecAggIntegrityError, match="certificate of enrolment id .* signature does not verify"):
        clients[victim].share(forged)


def test_replayed_or_relabelled_advertisements_are_refused() -> None:
    """Another round's advertisement, or a peer's advertisement under another node id, fails its signature."""
    server, clients, keys = keys_round()
    old_server = SecAggServer(round_id=2, participants=IDS, threshold=server.threshold, neighbours="auto",
                              quant=QUANT.resolve(len(IDS)))
    stale = SecAggClient(node_id=IDS[1], trust=trust(IDS[1], DEFAULT_SECURITY)).advertise(old_server.setup)
    msg = keys[IDS[0]]
    at = msg.peers.index(IDS[1])
    replayed = replace(msg, c_pks=msg.c_pks[:at] + (stale.c_pk,) + msg.c_pks[at + 1:],
                       s_pks=msg.s_pks[:at] + (stale.s_pk,) + msg.s_pks[at + 1:],
                       signatures=msg.signatures[:at] + (stale.signature,) + msg.signatures[at + 1:])
    with pytest.raises(SecAggIntegrityError, match="signature does not verify"):
        clients[IDS[0]].share(replayed)
    _, clients2, keys2 = keys_round()
    m = keys2[IDS[0]]
    swapped = replace(m, c_pks=(m.c_pks[1], m.c_pks[0], *m.c_pks[2:]), s_pks=(m.s_pks[1], m.s_pks[0], *m.s_pks[2:]),
                      certificates=(m.certificates[1], m.certificates[0], *m.certificates[2:]),
                      signatures=(m.signatures[1], m.signatures[0], *m.signatures[2:]))
    with pytest.raises(SecAggIntegrityError, match="signature does not verify"):
        clients2[IDS[0]].share(swapped)


def test_one_device_posing_as_two_neighbours_is_refused() -> None:
    """A corrupt device's certificate under two node ids (a Sybil) is refused by the neighbour that sees both,
    when the server forwards both (a server with the authority key drops them first: the next test)."""
    server, clients = cohort()
    adverts = {i: clients[i].advertise(server.setup) for i in IDS}
    sybil = SecAggClient(node_id=IDS[3], trust=trust(IDS[2], DEFAULT_SECURITY))  # node 4 holding device 3's identity
    adverts[IDS[3]] = sybil.advertise(server.setup)
    forwarding = SecAggServer(round_id=4, participants=IDS, threshold=server.threshold, neighbours="auto",
                              quant=QUANT.resolve(len(IDS)), graph_seed=server.setup.graph_seed)
    keys = forwarding.collect_keys(adverts)
    with pytest.raises(SecAggIntegrityError, match="present one enrolment id"):
        clients[IDS[0]].share(keys[IDS[0]])


def test_a_server_with_the_authority_key_drops_forged_and_sybil_advertisements(
        caplog: pytest.LogCaptureFixture) -> None:
    """A self-certified device, an advertisement over keys it was not signed for and a Sybil are dropped (and
    logged) at the setup stage, before any device sees them; the others' round completes with their exact sum."""
    server, clients = cohort()
    adverts = {i: clients[i].advertise(server.setup) for i in IDS}
    rogue = Authority.generate().enrol(IDS[0])  # the same enrolment id, certified by an authority of its own
    forged = adverts[IDS[0]]
    adverts[IDS[0]] = replace(forged, certificate=rogue.certificate.to_bytes(), signature=rogue.sign_advert(
        round_id=4, node_id=IDS[0], c_pk=forged.c_pk, s_pk=forged.s_pk, setup_digest=setup_digest(server.setup)))
    other = KeyPair.generate(np.random.default_rng(5).bytes).public
    adverts[IDS[1]] = replace(adverts[IDS[1]], c_pk=other)  # a genuine certificate, a signature over other keys
    adverts[IDS[3]] = SecAggClient(node_id=IDS[3], trust=trust(IDS[2], DEFAULT_SECURITY)).advertise(server.setup)
    with caplog.at_level("WARNING", logger="fedrec.secagg.protocol_server"):
        keys = server.collect_keys(adverts)
    dropped = {IDS[0], IDS[1], IDS[2], IDS[3]}
    assert set(keys) == set(IDS) - dropped and all(not set(m.peers) & dropped for m in keys.values())
    assert "certificate of enrolment id" in server.rejected[IDS[0]]
    assert f"advertisement of node {IDS[1]} (round 4): signature does not verify" in server.rejected[IDS[1]]
    assert server.rejected[IDS[2]] == server.rejected[IDS[3]]
    assert "also presented by another node" in server.rejected[IDS[3]]
    assert caplog.text.count("rejected") == 4
    shares = {i: clients[i].share(keys[i]) for i in keys}
    routed = server.collect_shares(shares)
    data = inputs()
    requests = server.collect_masked({i: clients[i].mask(routed[i], data[i]) for i in routed})
    result = server.collect_unmask({i: clients[i].unmask(requests[i]) for i in requests})
    assert result.survivors == sorted(set(IDS) - dropped) and result.dropped == sorted(dropped)
    want = sum(data[i]["x"] for i in result.survivors)
    assert np.abs(result.sums["x"] - want).max() <= len(IDS) / QUANT.resolve(len(IDS)).segments[0].scale


# -- parameters chosen by the server ----------------------------------------------------------


def big_setup(n: int, *, degree: int | None, threshold: int) -> Setup:
    return Setup(round_id=9, participants=tuple(range(n)), threshold=threshold, degree=degree,
                 graph_seed=bytes(32), quant=QUANT.resolve(n))


def test_a_degree_below_the_bound_is_refused() -> None:
    n = 1000
    floor = secure_degree(n)
    device = SecAggClient(node_id=5, trust=trust(5, DEFAULT_SECURITY))
    with pytest.raises(SecAggSecurityError, match=f"degree k=2 is below the security bound for n=1000.*k >= {floor}"):
        device.advertise(big_setup(n, degree=2, threshold=2))
    assert device.state == "aborted"
    ok = SecAggClient(node_id=5, trust=trust(5, DEFAULT_SECURITY))
    ok.advertise(big_setup(n, degree=floor, threshold=min_threshold(n, floor)))
    assert ok.state == "advertised"


def test_a_majority_threshold_below_the_collusion_bound_is_refused() -> None:
    n, k = 1000, secure_degree(1000)
    least = min_threshold(n, k)
    assert least > k // 2 + 1  # corrupt neighbours need more than a bare majority
    device = SecAggClient(node_id=5, trust=trust(5, DEFAULT_SECURITY))
    with pytest.raises(SecAggSecurityError, match=f"threshold t={k // 2 + 1} is below the security bound t >= {least}"):
        device.advertise(big_setup(n, degree=k, threshold=k // 2 + 1))


def test_the_server_cannot_lower_the_degree_through_the_config() -> None:
    assert neighbourhood_degree(1000, 2) == secure_degree(1000)
    assert neighbourhood_degree(1000, "auto") == secure_degree(1000)
    assert neighbourhood_degree(30, "auto") == 29  # small cohorts: the complete graph


def test_a_graph_the_server_biased_is_refused_and_its_seed_choice_is_harmless() -> None:
    """The server cannot pick neighbours: the seed hashes every signed advertisement; a list it bends is refused."""
    n = 60  # large enough for a sparse graph under the bound
    ids = list(range(n))
    t = resolve_threshold(0.5, n_participants=n, neighbours="auto")
    graphs = []
    for _ in range(2):  # the same server nonce twice: the devices' fresh keys still move the graph
        server = SecAggServer(round_id=4, participants=ids, threshold=t, neighbours="auto", quant=QUANT.resolve(n),
                              graph_seed=bytes(32))
        clients = {i: SecAggClient(node_id=i, trust=trust(i, DEFAULT_SECURITY)) for i in ids}
        adverts = {i: clients[i].advertise(server.setup) for i in ids}
        keys = server.collect_keys(adverts)
        graphs.append(server.graph)
    assert server.setup.k < n - 1 and graphs[0] != graphs[1]
    target = ids[0]
    msg = keys[target]
    strangers = sorted(set(ids) - set(msg.peers) - {target})[:2]
    bent = replace(msg, peers=(*msg.peers[:-2], *strangers),
                   c_pks=msg.c_pks[:-2] + tuple(adverts[s].c_pk for s in strangers),
                   s_pks=msg.s_pks[:-2] + tuple(adverts[s].s_pk for s in strangers),
                   certificates=msg.certificates[:-2] + tuple(adverts[s].certificate for s in strangers),
                   signatures=msg.signatures[:-2] + tuple(adverts[s].signature for s in strangers))
    with pytest.raises(SecAggMessageError, match="do not match this node's advertising neighbours"):
        clients[target].share(bent)
    # Leaving an advertiser out re-draws the graph for the device too: the old neighbour list no longer fits.
    other = keys[ids[1]]
    left_out = other.peers[0]
    fewer = replace(other, advertisers=tuple(a for a in other.advertisers if a != left_out),
                    digests=tuple(d for a, d in zip(other.advertisers, other.digests, strict=True) if a != left_out))
    with pytest.raises(SecAggMessageError, match="advertising neighbours"):
        clients[ids[1]].share(fewer)


def test_a_digest_list_without_the_devices_own_advertisement_is_refused() -> None:
    server, clients, keys = keys_round()
    msg = keys[IDS[0]]
    other = replace(msg, digests=(b"\x00" * 32, *msg.digests[1:]))
    with pytest.raises(SecAggIntegrityError, match="not the one it signed"):
        clients[IDS[0]].share(other)


def test_a_setup_split_between_devices_is_refused() -> None:
    """Device 1 is told another participant list (or threshold) than its peers: their signatures do not verify."""
    server, clients = cohort()
    split = replace(server.setup, graph_seed=b"\x01" * 32)
    adverts = {i: clients[i].advertise(split if i == IDS[0] else server.setup) for i in IDS}
    honest = SecAggServer(round_id=4, participants=IDS, threshold=server.threshold, neighbours="auto",
                          quant=QUANT.resolve(len(IDS)), graph_seed=server.setup.graph_seed,
                          authority_key=AUTHORITY.public_key)
    assert IDS[0] not in honest.collect_keys(adverts)  # a server that checks drops the split advertisement
    cheat = SecAggServer(round_id=4, participants=IDS, threshold=server.threshold, neighbours="auto",
                         quant=QUANT.resolve(len(IDS)), graph_seed=server.setup.graph_seed)
    assert cheat.setup == server.setup
    keys = cheat.collect_keys(adverts)
    with pytest.raises(SecAggIntegrityError):
        clients[IDS[0]].share(keys[IDS[0]])
    with pytest.raises(SecAggIntegrityError):
        clients[IDS[1]].share(keys[IDS[1]])


# -- model consistency ---------------------------------------------------------------


def test_different_tables_to_different_devices_make_the_sum_useless_and_the_round_fail() -> None:
    server, clients = cohort()
    table = {"item_factors": np.ones((3, 2)), "item_bias": np.zeros(3)}
    honest = model_digest(table, {"round": 1})
    other = model_digest({**table, "item_bias": np.array([0.0, 0.0, 1.0])}, {"round": 1})
    server.model_digest = honest
    digests = dict.fromkeys(IDS, honest) | {IDS[4]: other}  # device 5 got a doctored table
    with pytest.raises(SecAggIntegrityError, match="masks did not cancel"):
        aggregate_in_process(server, clients, inputs(), model_digests=digests)
    assert server.stage == "aborted"


def test_the_same_table_everywhere_sums_exactly() -> None:
    server, clients = cohort()
    digest = model_digest({"t": np.arange(3.0)}, {"round": 1})
    server.model_digest = digest
    data = inputs()
    result = aggregate_in_process(server, clients, data, model_digests=dict.fromkeys(IDS, digest))
    want = sum(d["x"] for d in data.values())
    assert np.abs(result.sums["x"] - want).max() <= len(IDS) / QUANT.resolve(len(IDS)).segments[0].scale


# -- a shifted share ---------------------------------------------------------------


def unmask_answers(drop: int | None = None) -> tuple[SecAggServer, dict[int, Any]]:
    server, clients = cohort()
    adverts = {i: clients[i].advertise(server.setup) for i in IDS}
    keys = server.collect_keys(adverts)
    shares = {i: clients[i].share(keys[i]) for i in IDS}
    routed = server.collect_shares(shares)
    data = inputs()
    masked = {i: clients[i].mask(routed[i], data[i]) for i in IDS if i != drop}
    requests = server.collect_masked(masked)
    return server, {i: clients[i].unmask(requests[i]) for i in requests}


def shift(answer: Any, owner: int, *, key: bool = False) -> Any:
    """``answer`` with its share of ``owner``'s seed (or key) moved by c^-1, still a field element."""
    field, ids = ("key_shares", answer.dropped) if key else ("seed_shares", answer.survivors)
    values = list(getattr(answer, field))
    at = ids.index(owner)
    values[at] = element_to_bytes((element_from_bytes(values[at]) + inverse(owner + 1)) % PRIME)
    return replace(answer, **{field: tuple(values)})


def test_a_shifted_seed_share_is_detected_and_its_holder_named() -> None:
    server, answers = unmask_answers()
    holder, owner = IDS[5], IDS[2]
    answers[holder] = shift(answers[holder], owner)
    with pytest.raises(SecAggInconsistentShareError, match=f"node {owner}'s self-mask seed.*holder node {holder}") as e:
        server.collect_unmask(answers)
    assert (e.value.owner, e.value.holder) == (owner, holder)
    assert server.stage == "aborted"


def test_a_shifted_key_share_of_a_dropped_device_is_detected_and_its_holder_named() -> None:
    dropped = IDS[7]
    server, answers = unmask_answers(drop=dropped)
    holder = IDS[1]
    answers[holder] = shift(answers[holder], dropped, key=True)
    with pytest.raises(SecAggInconsistentShareError, match=f"node {dropped}'s mask key.*holder node {holder}"):
        server.collect_unmask(answers)


def test_with_one_share_to_spare_a_shift_is_still_detected() -> None:
    """``t + 1`` shares detect a shifted one but cannot say whose; the round still aborts with the typed error."""
    server, answers = unmask_answers()
    t = server.threshold
    keep = IDS[: t + 1]  # holders of node 12's seed: exactly t + 1
    answers = {i: a for i, a in answers.items() if i in keep}
    answers[keep[0]] = shift(answers[keep[0]], IDS[-1])
    with pytest.raises(SecAggInconsistentShareError, match="unidentified holder") as e:
        server.collect_unmask(answers)
    assert e.value.holder is None


def test_honest_shares_pass_the_cross_check() -> None:
    server, answers = unmask_answers(drop=IDS[3])
    result = server.collect_unmask(answers)
    assert result.n_contributors == len(IDS) - 1


def test_a_simulation_authority_is_deterministic_and_distinct_per_device() -> None:
    a, b = SimulationAuthority(b"s" * 32), SimulationAuthority(b"s" * 32)
    assert a.identity(7).certificate == b.identity(7).certificate
    assert a.identity(7).certificate.public_key != a.identity(8).certificate.public_key
    a.identity(7).certificate.verify(a.public_key)
    with pytest.raises(SecAggIntegrityError):
        a.identity(7).certificate.verify(SimulationAuthority(b"t" * 32).public_key)
