"""The link-state index returns exactly what Flower's own scan returns, in the same order."""

from __future__ import annotations

import numpy as np
import pytest
from fedrec.simulations import flower_linkstate
from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # type: ignore[attr-defined]
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.simulation.run_simulation import NOOP_FEDERATION_ID, Run
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from testkit import in_memory_run


def _scenario(seed: int) -> list[tuple[int, list[str]]]:
    """Push messages to random nodes, then poll nodes in random order; record what each poll returns."""
    rng = np.random.default_rng(seed)
    factory, state, run = in_memory_run(rng)
    nodes = list(vce_api._register_nodes(12, factory))  # noqa: SLF001  (the engine's own registration)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    messages = [grid.create_message(RecordDict({"c": ConfigRecord({"i": i})}), "train",
                                    nodes[int(rng.integers(len(nodes)))], "1") for i in range(40)]
    ids = list(grid.push_messages(messages))
    by_id = {m: i for i, m in enumerate(ids)}
    trace = []
    for _ in range(60):
        node = nodes[int(rng.integers(len(nodes)))]
        limit = int(rng.integers(1, 3)) if rng.random() < 0.8 else None
        got = state.get_message_ins(node_id=node, limit=limit)
        trace.append((nodes.index(node), [str(by_id[m.metadata.message_id]) for m in got]))
    return trace


@pytest.mark.parametrize("seed", range(5))
def test_index_matches_flower_scan(seed: int) -> None:
    flower_linkstate.uninstall()
    expected = _scenario(seed)
    try:
        assert flower_linkstate.install()
        assert _scenario(seed) == expected
    finally:
        flower_linkstate.uninstall()
    assert any(got for _, got in expected)


def _extracted(seed: int) -> list[list[int]]:
    """Messages the engine's extractor thread hands to the workers, sweep by sweep (as message indices)."""
    import queue
    import threading

    rng = np.random.default_rng(seed)
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=int(rng.integers(1, 1 << 62)))
    run.federation_id = NOOP_FEDERATION_ID
    run.primary_task_id = int(rng.integers(1, 1 << 62))
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run.run_id, 1, SUPERLINK_NODE_ID
    state.run_ids[run.run_id] = RunRecord(run=run)  # type: ignore[attr-defined]
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)  # type: ignore[attr-defined]
    mapping = vce_api._register_nodes(300, factory)  # noqa: SLF001
    nodes = list(mapping)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    targets = [nodes[int(i)] for i in rng.integers(0, 20, 30)]  # several messages per node: one per sweep
    messages = [grid.create_message(RecordDict({"c": ConfigRecord({"i": i})}), "train", n, "1")
                for i, n in enumerate(targets)]
    by_id = {m: i for i, m in enumerate(grid.push_messages(messages))}
    out: queue.Queue[object] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, out, mapping, stop))
    thread.start()
    try:
        sweeps: list[list[int]] = []
        while sum(map(len, sweeps)) < len(messages):
            got = [by_id[out.get(timeout=10).metadata.message_id]]  # type: ignore[attr-defined]
            stop.wait(0.05)
            while not out.empty():
                got.append(by_id[out.get().metadata.message_id])  # type: ignore[attr-defined]
            sweeps.append(sorted(got))
    finally:
        stop.set()
        thread.join()
    return sweeps


def test_extractor_visits_only_pending_nodes_and_delivers_the_same_messages() -> None:
    flower_linkstate.uninstall()
    expected = _extracted(3)
    try:
        assert flower_linkstate.install()
        got = _extracted(3)
    finally:
        flower_linkstate.uninstall()
    assert sorted(sum(got, [])) == sorted(sum(expected, [])) == list(range(30))


def _registered(n: int) -> tuple[InMemoryLinkState, dict[int, int], dict[int, object], Run]:
    """The engine's own registration calls (patched or not), on a fresh state with one run."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(run_id=7)
    run.federation_id = NOOP_FEDERATION_ID
    run.primary_task_id = 8
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    mapping = vce_api._register_nodes(n, factory)  # noqa: SLF001
    stores = vce_api._register_node_info_stores(mapping, run, None)  # noqa: SLF001
    return state, mapping, stores, run


_RANDOM_OR_TIMED = {"node_id", "public_key", "registered_at", "last_activated_at", "online_until"}


def _node_fields(state: InMemoryLinkState, node_id: int) -> dict[str, object]:
    info = state.nodes[node_id]
    return {f.name: getattr(info, f.name) for f in info.DESCRIPTOR.fields if f.name not in _RANDOM_OR_TIMED}


def test_bulk_registration_leaves_the_state_flower_leaves() -> None:
    flower_linkstate.uninstall()
    want_state, want_map, want_stores, run = _registered(50)
    try:
        assert flower_linkstate.install()
        state, mapping, stores, _ = _registered(50)
    finally:
        flower_linkstate.uninstall()
    assert sorted(mapping.values()) == list(range(50)) == list(mapping.values())
    assert len(set(mapping)) == 50 and not {0, SUPERLINK_NODE_ID} & set(mapping)
    assert all(0 < n < 2**64 for n in mapping)
    assert state.get_nodes(run.run_id) == set(mapping)
    assert {_node_fields(state, n) == _node_fields(want_state, next(iter(want_map))) for n in mapping} == {True}
    for got, want in ((state.nodes[n], want_state.nodes[m]) for n, m in zip(mapping, want_map, strict=True)):
        assert got.online_until == want.online_until > 1e299  # heartbeats disabled, as in Flower
        assert len(got.public_key) == len(want.public_key) == 32 and got.registered_at == got.last_activated_at
    assert len({state.nodes[n].public_key for n in mapping}) == 50
    assert state.node_public_key_to_node_id == {state.nodes[n].public_key: n for n in mapping}
    assert state.owner_to_node_ids == {k: set(mapping) for k in want_state.owner_to_node_ids}
    # Stores appear on first use, with the context Flower pre-builds.
    assert len(stores) == 0
    for node, want_node in ((list(mapping)[i], list(want_map)[i]) for i in (0, 49)):
        got, want = stores[node].retrieve_context(run.run_id), want_stores[want_node].retrieve_context(run.run_id)
        assert (got.node_id, got.node_config, got.run_config) == (node, want.node_config, want.run_config)
        assert got.run_id == want.run_id and len(got.state) == len(want.state) == 0
        assert stores[node] is stores[node]
    assert len(stores) == 2
    with pytest.raises(KeyError):
        stores[12345]
