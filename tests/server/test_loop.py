"""The round loop's ``min-clients`` wait, on Flower's own in-memory link state and Grid."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fedrec.server.loop import Catalogue, train_over_grid, wait_for_nodes
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from testkit import in_memory_run

from fedrec.errors import ConfigError
from fedrec.runconfig import RunConfig


@pytest.fixture
def link() -> Iterator[tuple[LinkStateFactory, InMemoryLinkState, InMemoryGrid]]:
    """A run on an in-memory link state with no node yet, as the simulation engine sets one up."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    factory, state, run = in_memory_run(np.random.default_rng(0))
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    yield factory, state, grid
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _register(factory: LinkStateFactory, count: int) -> Any:
    return vce_api._register_nodes(count, factory)  # noqa: SLF001  (the engine's own registration)


def test_the_server_waits_until_min_clients_nodes_are_connected(link: Any) -> None:
    factory, _, grid = link
    _register(factory, 2)
    late = threading.Timer(1.5, _register, args=(factory, 3))
    late.start()
    start = time.monotonic()
    try:
        nodes = wait_for_nodes(grid, 5, timeout=60)
    finally:
        late.join()
    assert len(nodes) == 5 and nodes == sorted(nodes)
    assert time.monotonic() - start >= 1.5  # it did not start with the two that were there first


def test_with_enough_nodes_it_does_not_wait(link: Any) -> None:
    factory, _, grid = link
    _register(factory, 3)
    start = time.monotonic()
    assert len(wait_for_nodes(grid, 3, timeout=60)) == 3
    assert time.monotonic() - start < 1.0


def test_too_few_nodes_stop_the_run_before_round_one(link: Any) -> None:
    """``min-clients`` not reached within ``round-timeout``: a ConfigError naming the key, and no message sent."""
    factory, state, grid = link
    _register(factory, 2)
    cfg = RunConfig.from_flat({"min-clients": 3, "round-timeout": 1.0, "synthetic.n-items": 10, "model.dim": 2})
    with pytest.raises(ConfigError, match=r"^min-clients: only 2 devices connected within 1s"):
        train_over_grid(grid, cfg, Catalogue(10, (1.0, 5.0)))
    assert not state.message_ins_store
