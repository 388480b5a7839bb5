"""Which identity a device takes part in secure aggregation with (``client/secagg.py`` IdentityProvider).

Deployed devices read their enrolled identity folder; only devices of Flower's
simulation engine (``partition-id`` and ``num-partitions``) may use the
simulation authority, and a deployed device without an identity refuses.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from fedrec.client.secagg import IdentityProvider
from flwr.app import Context, RecordDict

from fedrec import wire
from fedrec.deploy.keys import load_authority, make_authority, make_device_identity
from fedrec.errors import SecAggConfigError
from fedrec.secagg.crypto.identity import SimulationAuthority


def _context(node_config: dict[str, object]) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})  # type: ignore[arg-type]


@pytest.mark.parametrize("node_config", [{}, {wire.NODE_PARTITION_ID: 0}, {wire.NODE_STORE: "/dev/null"},
                                         {wire.NODE_IDENTITY: ""}])
def test_deployed_device_without_identity_refuses(node_config: dict[str, object]) -> None:
    provider = IdentityProvider(SimulationAuthority.generate())
    with pytest.raises(SecAggConfigError, match="no device identity for secure aggregation.*secagg-identity"):
        provider(_context(node_config))


def test_simulated_devices_share_the_simulation_authority() -> None:
    authority = SimulationAuthority.generate()
    sim = {wire.NODE_PARTITION_ID: 3, wire.NODE_NUM_PARTITIONS: 10}
    trust = IdentityProvider(authority)(_context(sim))
    shipped = IdentityProvider(pickle.loads(pickle.dumps(authority)))(_context(sim))  # a Flower worker's copy
    assert trust.authority_key == shipped.authority_key == authority.public_key
    assert trust.identity.certificate == shipped.identity.certificate
    assert trust.identity.certificate.subject == 3
    trust.identity.certificate.verify(authority.public_key)


def test_identity_folder_wins_over_the_simulation_authority(tmp_path: Path) -> None:
    authority = load_authority(make_authority(tmp_path / "authority")[0])
    folder = make_device_identity(tmp_path / "devices", "d0", authority)
    provider = IdentityProvider(SimulationAuthority.generate())
    trust = provider(_context({wire.NODE_IDENTITY: str(folder), wire.NODE_PARTITION_ID: 0,
                               wire.NODE_NUM_PARTITIONS: 2}))
    assert trust.authority_key == authority.public_key
    trust.identity.certificate.verify(authority.public_key)
    broken = make_device_identity(tmp_path / "other", "d1", authority)
    (broken / "identity.cert").write_bytes(b"FRC1" + bytes(10))
    with pytest.raises(SecAggConfigError, match="identity.cert: certificate must be 108 bytes"):
        provider(_context({wire.NODE_IDENTITY: str(broken)}))
