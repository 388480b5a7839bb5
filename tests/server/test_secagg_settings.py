"""The security parameters are run-configuration keys for the server; devices hold the result to their own floor.

``secagg.sigma``, ``secagg.eta``, ``secagg.corrupt`` and ``secagg.dropout``
choose the degree and threshold the server announces. Stronger settings give
a larger ``k`` and ``t`` that devices accept; weaker ones give a round every
device refuses, because a device checks ``k`` and ``t`` against its own floor
(``DEFAULT_SECURITY``), never against anything the server sends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fedrec.server.secagg import neighbours_for, threshold_for
from fedrec.simulations.runner import check_secagg_threshold

from fedrec.errors import ConfigError, SecAggAbort, SecAggSecurityError
from fedrec.runconfig import RunConfig
from fedrec.secagg import (
    DEFAULT_SECURITY,
    DeviceTrust,
    QuantConfig,
    SecAggClient,
    SecAggServer,
    SecurityParams,
    SegmentSpec,
    aggregate_in_process,
    resolve_threshold,
)
from fedrec.secagg.crypto.identity import SimulationAuthority

N = 60
AUTHORITY = SimulationAuthority(b"fedrec settings test authority!!")
QUANT = QuantConfig(segments=(SegmentSpec.symmetric("x", 8, clip=1.0),)).resolve(N)


def round_under(settings: dict[str, Any]) -> tuple[SecAggServer, dict[int, SecAggClient], int, int]:
    """The server's round for ``settings`` (as ``SecureRounds`` plans it) and devices with the default floor."""
    spec = RunConfig.from_flat({"secagg.enabled": True, **settings}).secagg
    neighbours = neighbours_for(spec, N)
    k = N - 1 if neighbours == "all" else int(neighbours)
    t = resolve_threshold(threshold_for(spec), n_participants=N, neighbours=neighbours, params=spec.security)
    ids = list(range(1, N + 1))
    server = SecAggServer(round_id=3, participants=ids, threshold=t, neighbours=neighbours, quant=QUANT,
                          security=spec.security, authority_key=AUTHORITY.public_key)
    clients = {i: SecAggClient(node_id=i, trust=DeviceTrust(AUTHORITY.identity(i), AUTHORITY.public_key))
               for i in ids}
    return server, clients, k, t


def test_the_keys_default_to_the_bound_and_are_validated() -> None:
    spec = RunConfig.from_flat({}).secagg
    assert spec.security == DEFAULT_SECURITY
    assert RunConfig.from_flat({"secagg.sigma": 60, "secagg.corrupt": 0.1}).secagg.security == SecurityParams(
        sigma=60.0, corrupt=0.1)
    for key, bad, why in (("secagg.sigma", 0, "positive"), ("secagg.eta", -1.0, "positive"),
                          ("secagg.corrupt", 0.5, r"\[0, 0.5\)"), ("secagg.dropout", -0.1, r"\[0, 0.5\)"),
                          ("secagg.sigma", "high", "expected float"), ("secagg.dropout", float("nan"), "")):
        with pytest.raises(ConfigError, match=f"{key}.*{why}"):
            RunConfig.from_flat({key: bad})


def test_stronger_settings_raise_k_and_t_and_devices_take_part() -> None:
    server, clients, k, t = round_under({"secagg.sigma": 60.0})
    assert (k, t) == (50, 27) and (server.setup.k, server.threshold) == (50, 27)  # defaults: k = 40, t = 22
    rng = np.random.default_rng(0)
    data = {i: {"x": rng.uniform(-1, 1, 8)} for i in clients}
    result = aggregate_in_process(server, clients, data, dropouts={1: "mask", 2: "share"})
    assert result.n_contributors == N - 2
    want = sum(data[i]["x"] for i in result.survivors)
    assert np.abs(result.sums["x"] - want).max() <= N / QUANT.segments[0].scale


@pytest.mark.parametrize("weaker", [{"secagg.corrupt": 0.01}, {"secagg.dropout": 0.02}])
def test_weaker_settings_are_refused_by_every_device(weaker: dict[str, float]) -> None:
    server, clients, k, t = round_under(weaker)
    assert k < 40  # what the server would announce
    with pytest.raises(SecAggSecurityError, match=f"degree k={k} is below the security bound for n={N}"):
        SecAggClient(node_id=1, trust=DeviceTrust(AUTHORITY.identity(1), AUTHORITY.public_key)).advertise(
            server.setup)
    with pytest.raises(SecAggAbort, match="0 clients advertised keys"):
        aggregate_in_process(server, clients, {i: {"x": np.zeros(8)} for i in clients})
    cfg = RunConfig.from_flat({"secagg.enabled": True, **weaker})
    with pytest.raises(ConfigError, match="below the devices' own floor; they would refuse every round"):
        check_secagg_threshold(cfg, N)  # a simulation says so before Flower starts
