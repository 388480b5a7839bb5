"""An index for Flower 1.42's in-memory link state, so a round costs O(cohort), not O(nodes x cohort).

Flower's Simulation Engine polls ``InMemoryLinkState.get_message_ins(node_id)``
for every virtual node every 0.1 s, and each call scans *every* stored
message (validating each one) to find the few addressed to that node. With one
node per user that is ``nodes x messages`` validations per poll: at 943 nodes
and a full cohort the polling thread holds the state lock and the GIL for
seconds, and a round that needs ~5 s of work takes ~30 s.

:func:`install` keeps Flower's behaviour and checks and only changes how the
candidates are found: ``store_message_ins`` records each stored message id
under its destination node, and ``get_message_ins`` looks at that node's ids
only (validating them with Flower's own ``_check_stored_messages``, in store
order, with the same limit and delivered-marking). Ids of messages Flower has
since deleted are dropped lazily. It applies to Flower 1.42.x only (the
version whose internals it was checked against) and is a no-op elsewhere.
``simulations/bench_flower_linkstate.py`` measures the difference.

The engine's extractor thread (``vce_api.add_messages_to_queue``) also calls
``get_message_ins`` for *every* registered node on each 0.1 s sweep: at a
million nodes one sweep takes seconds even when each call is a dictionary
miss, and round time grows with the population. The installed extractor is
Flower's loop over the nodes the index holds pending messages for (same call,
same ``limit=1`` per node per sweep), so a sweep costs O(pending messages).

Registration: the engine registers its nodes one ``create_node`` plus one
``acknowledge_node_heartbeat`` call at a time (a fresh random id, key and
``datetime.now()`` each, two lock round trips) and pre-builds a
``DeprecatedRunInfoStore`` with a ``Context`` for every node before the first
message: about 60 us of CPU per node, a minute at a million nodes, plus the
memory of a million idle contexts. The installed ``_register_nodes`` writes the
same ``NodeInfo`` records (online, heartbeat disabled, random 64-bit ids and
32-byte keys) into the same state dictionaries in one locked pass, and
``_register_node_info_stores`` returns a mapping that builds a node's store and
context, with Flower's own ``register_context``, the first time a worker asks
for it. ``tests/simulations/test_flower_linkstate.py`` compares both with
Flower's own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from queue import Queue
from typing import Any

import flwr
import numpy as np
from flwr.common.constant import (
    HEARTBEAT_INTERVAL_INF,
    HEARTBEAT_PATIENCE,
    NODE_ID_NUM_BYTES,
    NOOP_ACCOUNT_NAME,
    NOOP_FLWR_AID,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SUPERLINK_NODE_ID,
)
from flwr.compat.client.run_info_store import DeprecatedRunInfoStore
from flwr.proto.node_pb2 import NodeInfo  # type: ignore[attr-defined]
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.constant import NodeStatus

log = logging.getLogger(__name__)

SUPPORTED = "1.42."
BULK_REGISTRATION_ENV = "FEDREC_BULK_REGISTRATION"
"""Set to ``0`` to keep Flower's own node registration (``simulations.bench_scale --startup`` measures both)."""
_ORIGINAL: dict[str, Any] = {}


def install() -> bool:
    """Patch :class:`InMemoryLinkState` for this process; ``False`` when the Flower version differs."""
    if not flwr.__version__.startswith(SUPPORTED):
        log.info("flower_linkstate: Flower %s is not %sx; leaving its link state unchanged", flwr.__version__,
                 SUPPORTED)
        return False
    if _ORIGINAL:
        return True
    _ORIGINAL["store_message_ins"] = InMemoryLinkState.store_message_ins
    _ORIGINAL["get_message_ins"] = InMemoryLinkState.get_message_ins
    InMemoryLinkState.store_message_ins = _store_message_ins  # type: ignore[method-assign]
    InMemoryLinkState.get_message_ins = _get_message_ins  # type: ignore[method-assign]
    bulk = os.environ.get(BULK_REGISTRATION_ENV, "1") != "0"
    for name, fn in _VCE_PATCHES.items():
        if bulk or name not in _REGISTRATION:
            _ORIGINAL[name] = getattr(vce_api, name)
            setattr(vce_api, name, fn)
    return True


def uninstall() -> None:
    """Restore Flower's own methods (tests compare both)."""
    for name, fn in _ORIGINAL.items():
        setattr(vce_api if name in _VCE_PATCHES else InMemoryLinkState, name, fn)
    _ORIGINAL.clear()


def _pending(self: InMemoryLinkState) -> defaultdict[int, dict[str, None]]:
    index = self.__dict__.get("_fedrec_pending")
    if index is None:
        index = self.__dict__["_fedrec_pending"] = defaultdict(dict)
        for msg_id, msg in self.message_ins_store.items():
            index[msg.metadata.dst_node_id][msg_id] = None
    return index


def _store_message_ins(self: InMemoryLinkState, message: Any) -> str | None:
    message_id = _ORIGINAL["store_message_ins"](self, message)
    if message_id is not None:
        with self.lock:
            _pending(self)[message.metadata.dst_node_id][message_id] = None
    return message_id


def _get_message_ins(self: InMemoryLinkState, node_id: int, limit: int | None, *,
                     run_id: int | None = None) -> list[Any]:
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Any] = []
    with self.lock:
        ids = _pending(self).get(node_id)
        for msg_id in list(ids or ()):
            self._check_stored_messages({msg_id})
            msg = self.message_ins_store.get(msg_id)
            if msg is None or msg.metadata.delivered_at != "":
                del ids[msg_id]  # type: ignore[union-attr]
                continue
            if run_id is None or msg.metadata.run_id == run_id:
                found.append(msg)
            if limit and len(found) == limit:
                break
    delivered_at = _now_iso()
    for msg in found:
        msg.metadata.delivered_at = delivered_at
        ids.pop(msg.metadata.message_id, None)  # type: ignore[union-attr]
    return found


def pending_nodes(state: InMemoryLinkState) -> list[int]:
    """Nodes with at least one pending message, in the order their first one arrived (drops empty entries)."""
    with state.lock:
        index = _pending(state)
        for node in [n for n, ids in index.items() if not ids]:
            del index[node]
        return list(index)


def _add_messages_to_queue(state: Any, queue: Queue[Any], nodes_mapping: dict[int, int],
                           f_stop: threading.Event) -> None:
    """Flower's extractor loop (``vce_api.add_messages_to_queue``) over the nodes with pending messages only."""
    if not isinstance(state, InMemoryLinkState):
        _ORIGINAL["add_messages_to_queue"](state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        for node_id in pending_nodes(state):
            if node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
        f_stop.wait(0.1)


def register_nodes(num_nodes: int, state_factory: Any) -> dict[int, int]:
    """Flower's ``vce_api._register_nodes`` in one pass: the same ``NodeInfo`` records, node id -> partition id.

    Each node is what ``create_node`` followed by ``acknowledge_node_heartbeat``
    with ``HEARTBEAT_INTERVAL_INF`` leaves behind: owner ``NOOP_FLWR_AID``, a
    random 64-bit id (never 0 or the SuperLink's), a random 32-byte public key,
    status online from the registration time on. Partition ids follow the
    registration order, as in Flower.
    """
    state = state_factory.state()
    if not isinstance(state, InMemoryLinkState):
        return dict(_ORIGINAL["_register_nodes"](num_nodes, state_factory))
    from flwr.supercore.date import now

    with state.lock:
        ids = _fresh_node_ids(num_nodes, taken=state.nodes.keys())
        keys = os.urandom(32 * num_nodes)
        current = now()
        stamp = current.isoformat()
        online_until = current.timestamp() + HEARTBEAT_PATIENCE * HEARTBEAT_INTERVAL_INF
        by_key = state.node_public_key_to_node_id
        owned = state.owner_to_node_ids.setdefault(NOOP_FLWR_AID, set())
        for i, node_id in enumerate(ids):
            key = keys[32 * i:32 * (i + 1)]
            if key in by_key:
                raise ValueError("Public key already in use")
            state.nodes[node_id] = NodeInfo(
                node_id=node_id, owner_aid=NOOP_FLWR_AID, owner_name=NOOP_ACCOUNT_NAME, status=NodeStatus.ONLINE,
                registered_at=stamp, last_activated_at=stamp, online_until=online_until,
                heartbeat_interval=HEARTBEAT_INTERVAL_INF, public_key=key)
            by_key[key] = node_id
        owned.update(ids)
    return dict(zip(ids, range(num_nodes), strict=True))


def _fresh_node_ids(n: int, *, taken: Any) -> list[int]:
    """``n`` distinct random unsigned 64-bit ids (``os.urandom``, as Flower's), none 0, the SuperLink's or taken."""
    exclude = {0, SUPERLINK_NODE_ID}
    out: dict[int, None] = {}
    while len(out) < n:
        need = n - len(out)
        raw = np.frombuffer(os.urandom(NODE_ID_NUM_BYTES * need), dtype="<u8")
        for node_id in raw.tolist():
            if node_id not in exclude and node_id not in taken:
                out[node_id] = None
    return list(out)[:n]


class LazyRunInfoStores(dict[int, DeprecatedRunInfoStore]):
    """Flower's node id -> ``DeprecatedRunInfoStore`` mapping, each store built on first use.

    A store (and its ``Context``) is made by Flower's own constructor and
    ``register_context`` with the arguments ``_register_node_info_stores``
    would pass; a node that never receives a message never costs one. Ids not
    in the node mapping raise ``KeyError``, as Flower's dictionary does.
    """

    def __init__(self, nodes_mapping: dict[int, int], run: Any, app_dir: str | None) -> None:
        super().__init__()
        self._mapping = nodes_mapping
        self._run = run
        self._app_dir = app_dir
        self._num_partitions = len(set(nodes_mapping.values()))
        self._lock = threading.Lock()

    def __missing__(self, node_id: int) -> DeprecatedRunInfoStore:
        partition = self._mapping[node_id]
        with self._lock:
            store = self.get(node_id)
            if store is None:
                store = DeprecatedRunInfoStore(node_id=node_id, node_config={
                    PARTITION_ID_KEY: partition, NUM_PARTITIONS_KEY: self._num_partitions})
                store.register_context(run_id=self._run.run_id, run=self._run, app_dir=self._app_dir)
                self[node_id] = store
            return store


def register_node_info_stores(nodes_mapping: dict[int, int], run: Any,
                              app_dir: str | None = None) -> dict[int, DeprecatedRunInfoStore]:
    """Flower's ``vce_api._register_node_info_stores``, built lazily (:class:`LazyRunInfoStores`)."""
    return LazyRunInfoStores(nodes_mapping, run, app_dir)


_VCE_PATCHES: dict[str, Any] = {"add_messages_to_queue": _add_messages_to_queue,
                                "_register_nodes": register_nodes,
                                "_register_node_info_stores": register_node_info_stores}


_REGISTRATION = ("_register_nodes", "_register_node_info_stores")


def _now_iso() -> str:
    from flwr.supercore.date import now

    return now().isoformat()
