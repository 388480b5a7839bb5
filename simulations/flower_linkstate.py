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
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from queue import Queue
from typing import Any

import flwr
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

log = logging.getLogger(__name__)

SUPPORTED = "1.42."
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
    _ORIGINAL["add_messages_to_queue"] = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = _add_messages_to_queue
    return True


def uninstall() -> None:
    """Restore Flower's own methods (tests compare both)."""
    for name, fn in _ORIGINAL.items():
        setattr(vce_api if name == "add_messages_to_queue" else InMemoryLinkState, name, fn)
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


def _now_iso() -> str:
    from flwr.supercore.date import now

    return now().isoformat()
