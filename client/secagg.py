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

Each device takes part with its certified identity (:class:`IdentityProvider`):
from the files named by the node config key ``secagg-identity`` (a folder
holding ``identity.pem``, ``identity.cert`` and ``authority.pub``,
:func:`fedrec.secagg.crypto.identity.load_identity`), else, in simulation,
from the simulation's enrolment authority by ``partition-id``. A device is
simulated only when its node config holds both ``partition-id`` and
``num-partitions`` (Flower's simulation engine sets both; ``fedrec device
join --partition-id`` sets only the first): a deployed device without an
identity refuses every secure round, because its authority would be a
random one of its own flwr-clientapp process that no peer trusts. The mask part
binds the digest of the table and round configuration the device received
into its pairwise masks (:func:`downlink_digest`), so a table sent to some
devices only makes the sum useless.

The mask part trains through ``client/device.py``'s ``train_device``, the
plain path's own training call (privacy plan included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec import wire
from fedrec.errors import SecAggConfigError
from fedrec.secagg import (
    DeviceTrust,
    PartReplies,
    SecAggMessageError,
    flatten_update,
    handle_secagg_parts,
    model_digest,
)
from fedrec.secagg.crypto.identity import (
    AUTHORITY_FILE,
    CERTIFICATE_FILE,
    IDENTITY_KEY_FILE,
    SimulationAuthority,
    load_identity,
)

from .device import SourceProvider, train_device
from .records import load_state, save_state

NODE_IDENTITY = wire.NODE_IDENTITY
"""Node config key: the folder of a deployed device's identity files."""


@dataclass(frozen=True)
class IdentityProvider:
    """A device's :class:`DeviceTrust`: from its identity files, else from the simulation's authority.

    ``authority`` plays the enrolment authority in simulation (identity per
    ``partition-id``); it lives with the ClientApp, never with the server.
    """

    authority: SimulationAuthority

    def __call__(self, context: Context) -> DeviceTrust:
        folder = context.node_config.get(NODE_IDENTITY)
        if isinstance(folder, str) and folder:
            return _file_trust(folder)
        pid = context.node_config.get(wire.NODE_PARTITION_ID)
        simulated = wire.NODE_NUM_PARTITIONS in context.node_config
        if not simulated or isinstance(pid, bool) or not isinstance(pid, int):
            raise SecAggConfigError(
                f"no device identity for secure aggregation: node config {NODE_IDENTITY!r} must name the "
                "device's identity folder (identity.pem, identity.cert, authority.pub; 'fedrec server keys' "
                "makes devices/NAME.identity, 'fedrec device join --identity DIR' passes it)")
        return DeviceTrust(self.authority.identity(pid), self.authority.public_key)


_FILE_TRUST: dict[str, DeviceTrust] = {}


def _file_trust(folder: str) -> DeviceTrust:
    if folder not in _FILE_TRUST:
        base = Path(folder)
        identity, anchor = load_identity(base / IDENTITY_KEY_FILE, base / CERTIFICATE_FILE, base / AUTHORITY_FILE)
        _FILE_TRUST[folder] = DeviceTrust(identity, anchor)
    return _FILE_TRUST[folder]


def register_secagg(app: ClientApp, source: SourceProvider, identities: IdentityProvider | None = None, *,
                    seeded_noise: bool = False) -> None:
    """Register the secure-aggregation handler (message type ``train.secagg``) on ``app``.

    ``identities`` defaults to a fresh simulation authority (used by simulated
    devices only; deployed devices name their identity folder in the node config).
    ``seeded_noise``: see :func:`~.device.train_device`.
    """
    category, action = wire.MSG_SECAGG.split(".")
    assert category == "train"
    app.train(action)(SecAggHandler(source, identities or simulation_identities(), seeded_noise))


def simulation_identities() -> IdentityProvider:
    """An :class:`IdentityProvider` over a fresh simulation authority (one per ClientApp)."""
    return IdentityProvider(SimulationAuthority.generate())


@dataclass(frozen=True)
class SecAggHandler:
    """The ClientApp function answering every part of a ``train.secagg`` message.

    A module-level class rather than a closure: Flower's simulation pickles the
    whole ClientApp with every message, and an instance pickles by reference
    to its class, in a fraction of the time a closure's code takes.
    """

    source: SourceProvider
    identities: IdentityProvider
    seeded_noise: bool = False

    def __call__(self, msg: Message, context: Context) -> Message:
        parts = message_parts(msg)
        state = load_state(context)
        metrics: dict[str, Any] = {}
        segments = (_trainer(msg, context, state, self.source, metrics, seeded_noise=self.seeded_noise)
                    if wire.SECAGG_MASK in parts else None)
        digest = downlink_digest(dict(msg.content.items())) if wire.SECAGG_MASK in parts else None
        try:
            trust = self.identities(context)
            answer = handle_secagg_parts(parts, state, node_id=context.node_id, trust=trust, segments=segments,
                                         **({} if digest is None else {"model_digest": digest}))
        finally:
            save_state(context, state)
        content = answer_content(answer)
        if metrics and wire.SECAGG_MASK in answer.replies:
            content[wire.RECORD_METRICS] = MetricRecord(metrics)
        return Message(content, reply_to=msg)


def _trainer(msg: Message, context: Context, state: dict[str, np.ndarray], source: SourceProvider,
             metrics: dict[str, Any], *, seeded_noise: bool) -> Callable[[], dict[str, np.ndarray]]:
    """``segments()`` for the mask part: train the device's users on the downlink table, flatten the update."""

    def segments() -> dict[str, np.ndarray]:
        out = train_device(msg, context, state, source, seeded_noise=seeded_noise)
        metrics.update(out.metrics)
        return flatten_update(out.update.fixed_segments(), extra=out.update.extra)

    return segments


def downlink_digest(records: Mapping[str, Any]) -> bytes:
    """:func:`fedrec.secagg.model_digest` of the table and round configuration this device received."""
    table = records.get(wire.RECORD_GLOBAL)
    config = records.get(wire.RECORD_CONFIG)
    arrays = {k: wire.npy_array(v.data) for k, v in table.items()} if isinstance(table, ArrayRecord) else {}
    values = dict(config.items()) if isinstance(config, ConfigRecord) else {}
    return model_digest(arrays, values)


def answer_content(answer: PartReplies) -> RecordDict:
    """The reply records of a device's answer: one record set per accepted part, an error record per refused one."""
    content = RecordDict()
    for stage, reply in answer.replies.items():
        for name, record in part_records(stage, reply).items():
            content[name] = record
    for stage, reason in answer.errors.items():
        content[wire.secagg_error_record(stage)] = ConfigRecord({wire.SECAGG_REASON: reason})
    return content


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
            payload.update({k: wire.npy_array(v.data) for k, v in arrays.items()})
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
