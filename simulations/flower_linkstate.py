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
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import flwr
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
    return True


def uninstall() -> None:
    """Restore Flower's own methods (tests compare both)."""
    for name, fn in _ORIGINAL.items():
        setattr(InMemoryLinkState, name, fn)
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


def _now_iso() -> str:
    from flwr.supercore.date import now

    return now().isoformat()
