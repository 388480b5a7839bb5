"""The ClientApp's per-device randomness: distinct streams, reproducible in simulation."""

from __future__ import annotations

import numpy as np
from fedrec.client.device import stream_offset
from flwr.app import Context, RecordDict

from fedrec import wire
from fedrec.runconfig import RunConfig


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_simulated_devices_get_distinct_reproducible_streams() -> None:
    cfg = RunConfig.from_flat({})
    offsets = [stream_offset(_context({"partition-id": pid}), cfg, {}) for pid in range(50)]
    assert len(set(offsets)) == 50
    assert offsets == [stream_offset(_context({"partition-id": pid}), cfg, {}) for pid in range(50)]


def test_streams_of_multi_user_devices_do_not_overlap() -> None:
    cfg = RunConfig.from_flat({"users-per-client": 3})
    starts = [stream_offset(_context({"partition-id": pid}), cfg, {}) for pid in range(10)]
    streams = [s + j for s in starts for j in range(3)]
    assert len(set(streams)) == len(streams)


def test_a_real_device_draws_its_offset_once_and_keeps_it() -> None:
    cfg = RunConfig.from_flat({})
    state: dict[str, np.ndarray] = {}
    first = stream_offset(_context({}), cfg, state)
    assert wire.STATE_STREAM in state
    assert stream_offset(_context({}), cfg, state) == first
    other = stream_offset(_context({}), cfg, {})
    assert other != first
