"""Device side of secure aggregation: the ``train.secagg`` handler of the ClientApp.

A ``train.secagg`` message holds one part per protocol stage addressed to the
device; with pipelined rounds, the mask or unmask part of the current round and
the setup or share part of the next. :func:`fedrec.secagg.handle_secagg_parts`
answers each part from the device state alone (``Context.state``), so the
stages may run in different processes, and a part that is refused or fails
comes back as that part's error record while the other part is still answered.

The mask part is the only one that trains: its message carries the global
table and round configuration, and the device trains its users only when the
protocol asks for the vector to mask. The reply holds the masked vector and
the device's plain metrics; the update itself never leaves the device.

A message without any part raises: Flower turns it into an error reply, which
the server treats as a dropout of every round it concerns. The state is
written back whether the parts succeeded or not, so a refused message cannot
roll the device back to an earlier stage.

The mask part trains through ``client/device.py``'s ``train_device``, the
plain path's own training call (privacy plan included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec import wire
from fedrec.secagg import SecAggMessageError, flatten_update, handle_secagg_parts

from .device import SourceProvider, train_device
from .records import load_state, save_state


def register_secagg(app: ClientApp, source: SourceProvider) -> None:
    """Register the secure-aggregation handler (message type ``train.secagg``) on ``app``."""
    category, action = wire.MSG_SECAGG.split(".")
    assert category == "train"
    app.train(action)(SecAggHandler(source))


@dataclass(frozen=True)
class SecAggHandler:
    """The ClientApp function answering every part of a ``train.secagg`` message.

    A module-level class rather than a closure: Flower's simulation pickles the
    whole ClientApp with every message, and an instance pickles by reference
    to its class, in a fraction of the time a closure's code takes.
    """

    source: SourceProvider

    def __call__(self, msg: Message, context: Context) -> Message:
        parts = message_parts(msg)
        state = load_state(context)
        metrics: dict[str, Any] = {}
        segments = _trainer(msg, context, state, self.source, metrics) if wire.SECAGG_MASK in parts else None
        try:
            answer = handle_secagg_parts(parts, state, node_id=context.node_id, segments=segments)
        finally:
            save_state(context, state)
        content = RecordDict()
        for stage, reply in answer.replies.items():
            for name, record in part_records(stage, reply).items():
                content[name] = record
        for stage, reason in answer.errors.items():
            content[wire.secagg_error_record(stage)] = ConfigRecord({wire.SECAGG_REASON: reason})
        if metrics and wire.SECAGG_MASK in answer.replies:
            content[wire.RECORD_METRICS] = MetricRecord(metrics)
        return Message(content, reply_to=msg)


def _trainer(msg: Message, context: Context, state: dict[str, np.ndarray], source: SourceProvider,
             metrics: dict[str, Any]) -> Callable[[], dict[str, np.ndarray]]:
    """``segments()`` for the mask part: train the device's users on the downlink table, flatten the update."""

    def segments() -> dict[str, np.ndarray]:
        out = train_device(msg, context, state, source)
        metrics.update(out.metrics)
        return flatten_update(out.update.segments())

    return segments


def message_parts(msg: Message) -> dict[str, dict[str, Any]]:
    """``{stage: payload}`` of a server message: each part's scalars and lists, plus any arrays.

    Raises
    ------
    SecAggMessageError
        The message holds no part.
    """
    records = dict(msg.content.items())
    parts: dict[str, dict[str, Any]] = {}
    for stage in wire.SECAGG_STAGES:
        config = records.get(wire.secagg_record(stage))
        if not isinstance(config, ConfigRecord):
            continue
        payload: dict[str, Any] = dict(config.items())
        arrays = records.get(wire.secagg_arrays_record(stage))
        if isinstance(arrays, ArrayRecord):
            payload.update({k: v.numpy() for k, v in arrays.items()})
        parts[stage] = payload
    if not parts:
        raise SecAggMessageError(f"{msg.metadata.message_type}: no secure-aggregation part in the message")
    return parts


def part_records(stage: str, payload: Mapping[str, Any]) -> dict[str, ConfigRecord | ArrayRecord]:
    """A part's reply payload as records: arrays in an ArrayRecord, everything else in a ConfigRecord."""
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    out: dict[str, ConfigRecord | ArrayRecord] = {
        wire.secagg_record(stage): ConfigRecord({k: v for k, v in payload.items() if k not in arrays})}
    if arrays:
        out[wire.secagg_arrays_record(stage)] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return out
