"""A Flower client mod that keeps every simulated device's state in the run's device-state table.

Flower's simulation keeps ``Context.state`` in memory only, so a resumed run
would start every device afresh. :class:`PersistDeviceState` wraps each
message a simulated device handles:

- before the first message a device handles in this process's life of its
  context, it reads the device's newest row of the
  :class:`~fedrec.store.device_table.DeviceStateTable` (after a resume, the
  state it had at the checkpoint's round) into ``Context.state``;
- after a training message (plain ``train`` or the ``train.secagg`` trip that
  carries the round's table), it writes the device's state as the row of that
  round, leaving out round-scoped secure-aggregation state.

The device is named by its ``partition-id`` (stable across runs; node ids are
not). Without a partition id (a real device) the mod does nothing: there the
client SDK's encrypted store holds the state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Message

from fedrec import wire
from fedrec.store.device_table import DeviceStateTable, persisted

from .records import load_state, save_state


@dataclass(frozen=True)
class PersistDeviceState:
    """Client mod: restore a simulated device's state from ``path`` once, write it after each training round.

    A module-level frozen dataclass holding only the path, so Flower's per-message
    pickling of the ClientApp stays cheap.
    """

    path: str

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        pid = context.node_config.get("partition-id")
        if pid is None:
            return call_next(msg, context)
        table, device = DeviceStateTable(self.path), str(pid)
        if wire.STATE_RESTORED not in context.state:
            restore(table, device, context)
        reply = call_next(msg, context)
        config = msg.content.config_records.get(wire.RECORD_CONFIG)
        training = not msg.metadata.message_type.startswith(wire.MSG_EVALUATE)
        if training and config is not None and not reply.has_error():
            table.write(device, int(config[wire.CFG_ROUND]), persisted(load_state(context)))  # type: ignore[arg-type]
        return reply


def restore(table: DeviceStateTable, device: str, context: Context) -> None:
    """Merge the device's newest persisted row into ``Context.state`` (keys already there win)."""
    row = table.read(device)
    if row is not None:
        state = load_state(context)
        save_state(context, {**row[1], **state})
    context.state[wire.STATE_RESTORED] = ConfigRecord({"round": -1 if row is None else row[0]})
