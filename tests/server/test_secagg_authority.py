"""The server verifies key advertisements too, when it has the enrolment authority's public key.

Two devices of a real Flower simulation forge their advertisement on the way
out (a client mod on the real ClientApp): one presents a certificate from an
authority of its own, the other a genuine certificate with a signature that
does not cover the keys it sends. Without the authority key the server
forwards them and every honest device refuses the round (their neighbour does
not verify); with it, through the same server code (``SecureRounds``, the
secure evaluation), the two are dropped at the setup stage and logged, and
the others' rounds complete.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from fedrec.client.app import make_client_app
from fedrec.client.secagg import IdentityProvider, message_parts
from fedrec.server.app import catalogue_for
from fedrec.server.loop import wait_for_nodes
from fedrec.server.secagg import SecureRounds
from fedrec.server.secure_eval import secure_evaluate
from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from testkit import RecordingGrid

from fedrec import wire
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig
from fedrec.secagg import AdvertiseKeys, Setup, protocol_round_id
from fedrec.secagg.crypto.identity import Authority, Certificate, SimulationAuthority
from fedrec.secagg.crypto.keys import KeyPair
from fedrec.secagg.messages import coerce, setup_digest

N_DEVICES = 12
SELF_CERTIFIED, RESIGNED = 0, 1  # partition ids of the two forgers
CFG = {"synthetic.n-users": N_DEVICES, "synthetic.n-items": 30, "synthetic.mean-interactions": 12, "model.dim": 4,
       "secagg.enabled": True, "secagg.neighbours": "all", "secagg.timeout": 120.0, "secagg.pipeline": False,
       "secagg.eval-min-cohort": 4}
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False}}


def forge(msg: Message, context: Context, call_next: Any) -> Message:
    """A client mod: the forgers' setup answers leave with a forged advertisement (training and evaluation)."""
    reply = call_next(msg, context)
    pid = int(context.node_config[wire.NODE_PARTITION_ID])
    name = wire.secagg_record(wire.SECAGG_SETUP)
    if pid not in (SELF_CERTIFIED, RESIGNED) or reply.has_error() or name not in reply.content.config_records:
        return reply
    advert = coerce(AdvertiseKeys, dict(reply.content.config_records[name].items()))
    if pid == SELF_CERTIFIED:
        rogue = Authority.generate().enrol(pid)
        setup = coerce(Setup, message_parts(msg)[wire.SECAGG_SETUP])
        advert = replace(advert, certificate=rogue.certificate.to_bytes(), signature=rogue.sign_advert(
            round_id=advert.round_id, node_id=advert.node_id, c_pk=advert.c_pk, s_pk=advert.s_pk,
            setup_digest=setup_digest(setup)))
    else:
        advert = replace(advert, c_pk=KeyPair.generate(np.random.default_rng().bytes).public)
    reply.content[name] = ConfigRecord(advert.to_dict())  # type: ignore[arg-type]
    return reply


def test_a_server_with_the_authority_key_drops_forged_advertisements(caplog: pytest.LogCaptureFixture) -> None:
    cfg = RunConfig.from_flat(CFG)
    authority = SimulationAuthority.generate()  # the runner's role: it enrols the devices and tells the server
    box: dict[str, Any] = {}

    def main(grid: Grid, context: Context) -> None:
        rec = box["grid"] = RecordingGrid(grid)
        nodes = box["nodes"] = wait_for_nodes(rec, N_DEVICES, timeout=60)
        catalogue = catalogue_for(cfg)
        state = ServerState.start(catalogue.n_items, cfg.model, cfg.fed, global_mean=3.0)
        box["unchecked"] = SecureRounds(rec, cfg).train(state, nodes, 1)
        box["checked"] = SecureRounds(rec, cfg, authority_key=authority.public_key).train(state, nodes, 2)
        box["eval"] = secure_evaluate(rec, cfg, state, nodes, 2, rating_scale=catalogue.rating_scale,
                                      authority_key=authority.public_key)

    app = ServerApp()
    app.main()(main)
    client = make_client_app(mods=[forge], run_config=cfg, identities=IdentityProvider(authority))
    with caplog.at_level(logging.INFO, logger="fedrec"):
        run_simulation(server_app=app, client_app=client, num_supernodes=N_DEVICES, backend_config=BACKEND)
    rec, nodes = box["grid"], box["nodes"]
    node_of = {}
    for reply in rec.replies:
        record = reply.content.config_records.get(wire.secagg_record(wire.SECAGG_SETUP))
        if record is not None:
            node_of[Certificate.from_bytes(bytes(record["certificate"])).subject] = reply.metadata.src_node_id
    assert sorted(node_of) == list(range(N_DEVICES))
    forgers = sorted(node_of[p] for p in (SELF_CERTIFIED, RESIGNED))

    # Without the key the server forwards the forged advertisements and every honest device refuses.
    sums, dropped, _ = box["unchecked"]
    assert sums.n_clients == 0 and dropped == nodes
    first = protocol_round_id(1, prestarted=False)
    assert f"round {first} aborted: 0 clients sent shares" in caplog.text

    # With it the two are dropped at the setup stage, named and logged; the round and the evaluation go on.
    sums, dropped, _ = box["checked"]
    assert sums.n_clients == N_DEVICES - 2 and dropped == forgers
    second = protocol_round_id(2, prestarted=False)
    assert (f"round {second}: rejected AdvertiseKeys from node {node_of[SELF_CERTIFIED]}: certificate of enrolment "
            f"id {SELF_CERTIFIED}: signature does not verify") in caplog.text
    assert (f"round {second}: rejected AdvertiseKeys from node {node_of[RESIGNED]}: advertisement of node "
            f"{node_of[RESIGNED]} (round {second}): signature does not verify") in caplog.text
    assert box["eval"]["eval_replies"] == N_DEVICES - 2 and "rmse" in box["eval"]
    assert caplog.text.count("rejected AdvertiseKeys") == 4  # two in training round 2, two in its evaluation
