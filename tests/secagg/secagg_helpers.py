"""Helpers shared by the secure-aggregation device tests."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fedrec.secagg import AdvertiseKeys, DeviceTrust, SecAggClient, SecurityParams, check_payload
from fedrec.secagg.crypto.identity import SimulationAuthority, advert_digest, advert_statement
from fedrec.secagg.device_state import decode
from fedrec.secagg.messages import Setup, setup_digest


def wire(payload: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
    """A payload as it comes out of a record: plain values only, nothing shared with the sender.

    ``check=False`` lets a deliberately malformed payload through to the device under test.
    """
    if check:
        check_payload(payload)
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, value, allow_pickle=False)
            buffer.seek(0)
            out[key] = np.load(buffer, allow_pickle=False)
        elif isinstance(value, list):
            out[key] = [type(v)(v) for v in value]
        else:
            out[key] = value
    return out


def stored(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.array(value, copy=True) for key, value in state.items()}


AUTHORITY = SimulationAuthority(b"fedrec test enrolment authority!")
"""The enrolment authority of the device tests (a fixed secret: reproducible, and never a deployment's)."""


def trust(node: int, security: SecurityParams | None = None) -> DeviceTrust:
    """Device ``node``'s identity from :data:`AUTHORITY`; no security bound unless given (small test graphs)."""
    return DeviceTrust(AUTHORITY.identity(node), AUTHORITY.public_key, security)


def restore(state: Mapping[str, np.ndarray], **kwargs: Any) -> SecAggClient:
    """``SecAggClient.from_state`` with the stored node's test identity."""
    try:
        node = decode(state).node_id
    except Exception:
        node = 0
    return SecAggClient.from_state(state, trust=trust(node), **kwargs)


def resign(advert: AdvertiseKeys, setup: Setup, **changes: Any) -> AdvertiseKeys:
    """``advert`` with ``changes``, signed again by its node's :data:`AUTHORITY` identity (a device lying
    about its own keys, as opposed to a server substituting them)."""
    msg = replace(advert, **changes)
    identity = AUTHORITY.identity(msg.node_id)
    signature = identity.sign_advert(
        round_id=msg.round_id, node_id=msg.node_id, c_pk=msg.c_pk, s_pk=msg.s_pk, setup_digest=setup_digest(setup)
    )
    return replace(msg, certificate=identity.certificate.to_bytes(), signature=signature)


def digest_of(msg: AdvertiseKeys, setup: Setup) -> bytes:
    """The digest a server lists for ``msg`` (and the graph seed hashes)."""
    statement = advert_statement(
        round_id=msg.round_id,
        node_id=msg.node_id,
        c_pk=msg.c_pk,
        s_pk=msg.s_pk,
        setup_digest=setup_digest(setup),
        certificate=msg.certificate,
    )
    return advert_digest(statement, msg.signature)
