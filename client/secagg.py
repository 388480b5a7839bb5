"""Device side of secure aggregation: the four ``train.secagg_*`` handlers of the ClientApp.

Each stage is answered by :func:`fedrec.secagg.handle_secagg` from the device
state alone (``Context.state``), so the stages may run in different processes.
The mask stage is the only one that trains: its message carries the global
table and round configuration, and the device trains its users only when the
protocol asks for the vector to mask. The reply holds the masked vector and
the device's plain metrics; the update itself never leaves the device.

Any refusal raises: Flower turns it into an error reply, which the server
treats as a dropout. The state is written back whether the stage succeeded or
not, so a refused message cannot roll the device back to an earlier stage.

The mask stage trains through ``client.app``'s ``train_device``, the plain
path's own training call (privacy plan included). ``client.app`` registers
these handlers while it builds its ClientApp at import time, so the handlers
take its helpers when they run, not when this module loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec import wire
from fedrec.secagg import SecAggMessageError, flatten_update, handle_secagg

if TYPE_CHECKING:
    from .app import SourceProvider


def register_secagg(app: ClientApp, source: SourceProvider) -> None:
    """Register one handler per secure-aggregation stage (``train.secagg_setup`` ...) on ``app``."""
    for stage in (wire.MSG_SECAGG_SETUP, wire.MSG_SECAGG_SHARE, wire.MSG_SECAGG_MASK, wire.MSG_SECAGG_UNMASK):
        category, action = stage.split(".")
        assert category == "train"
        app.train(action)(StageHandler(stage, source))


@dataclass(frozen=True)
class StageHandler:
    """The ClientApp function answering one stage.

    A module-level class rather than a closure: Flower's simulation pickles the
    whole ClientApp with every message, and an instance pickles by reference
    to its class, in a fraction of the time a closure's code takes.
    """

    stage: str
    source: SourceProvider

    def __call__(self, msg: Message, context: Context) -> Message:
        from .app import load_state, save_state

        payload = message_payload(msg)
        state = load_state(context)
        metrics: dict[str, Any] = {}
        mask = self.stage == wire.MSG_SECAGG_MASK
        segments = _trainer(msg, context, state, self.source, metrics) if mask else None
        try:
            reply = handle_secagg(self.stage, payload, state, node_id=context.node_id, segments=segments)
        finally:
            save_state(context, state)
        content = RecordDict()
        for name, record in payload_records(reply).items():
            content[name] = record
        if metrics:
            content[wire.RECORD_METRICS] = MetricRecord(metrics)
        return Message(content, reply_to=msg)


def _trainer(msg: Message, context: Context, state: dict[str, np.ndarray], source: SourceProvider,
             metrics: dict[str, Any]) -> Callable[[], dict[str, np.ndarray]]:
    """``segments()`` for the mask stage: train the device's users on the downlink table, flatten the update."""

    def segments() -> dict[str, np.ndarray]:
        from .app import train_device

        out = train_device(msg, context, state, source)
        metrics.update(out.metrics)
        return flatten_update(out.update.segments())

    return segments


def message_payload(msg: Message) -> dict[str, Any]:
    """The stage payload of a server message (scalars and lists, plus any arrays)."""
    config = msg.content.config_records.get(wire.RECORD_SECAGG)
    if config is None:
        raise SecAggMessageError(f"{msg.metadata.message_type}: no {wire.RECORD_SECAGG!r} record")
    out: dict[str, Any] = dict(config.items())
    arrays = msg.content.array_records.get(wire.RECORD_SECAGG_ARRAYS)
    if arrays is not None:
        out.update({k: v.numpy() for k, v in arrays.items()})
    return out


def payload_records(payload: Mapping[str, Any]) -> dict[str, ConfigRecord | ArrayRecord]:
    """A reply payload as records: arrays in an ArrayRecord, everything else in a ConfigRecord."""
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    out: dict[str, ConfigRecord | ArrayRecord] = {
        wire.RECORD_SECAGG: ConfigRecord({k: v for k, v in payload.items() if k not in arrays})}
    if arrays:
        out[wire.RECORD_SECAGG_ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return out
