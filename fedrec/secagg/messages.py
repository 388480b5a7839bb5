"""The messages that cross the wire, one frozen dataclass per stage.

Fields are ints, bytes, tuples of those and (for the masked vector) a numpy
array. ``to_dict`` flattens a message into values a Flower record holds
(``int``, ``float``, ``str``, ``bytes``, lists of one of those, numpy arrays;
node ids up to 2^64 - 1 fit Flower's unsigned integer values) and
``from_dict`` checks every key, type, length and range before building the
message again, raising :class:`SecAggMessageError` naming the field.

Checks that need round state (is this sender a participant, is this vector
the right length for the layout) are made by the receiving party.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fedrec.secagg.errors import SecAggConfigError, SecAggMessageError
from fedrec.secagg.field import ELEMENT_BYTES
from fedrec.secagg.graph import GRAPH_SEED_BYTES, check_participants, degree_of
from fedrec.secagg.keys import CIPHERTEXT_BYTES, KEY_BYTES
from fedrec.secagg.quantize import QuantConfig, SegmentSpec

__all__ = [
    "AdvertiseKeys",
    "MaskedInput",
    "Message",
    "PeerKeys",
    "RoutedShares",
    "Setup",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "coerce",
    "payload_size",
]

_MAX_U64 = (1 << 64) - 1


def _fail(kind: str, key: str, why: str) -> SecAggMessageError:
    return SecAggMessageError(f"{kind}: field {key!r} {why}")


def _check_int(kind: str, key: str, value: object, lo: int = 0, hi: int = _MAX_U64) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _fail(kind, key, f"must be an int, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        raise _fail(kind, key, f"= {value} is outside [{lo}, {hi}]")
    return value


def _check_ids(kind: str, key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise _fail(kind, key, f"must be a list of node ids, got {type(value).__name__}")
    ids = tuple(_check_int(kind, key, v) for v in value)
    if len(set(ids)) != len(ids):
        raise _fail(kind, key, "contains duplicate node ids")
    return ids


def _check_bytes(kind: str, key: str, value: object, length: int) -> bytes:
    if not isinstance(value, bytes):
        raise _fail(kind, key, f"must be bytes, got {type(value).__name__}")
    if len(value) != length:
        raise _fail(kind, key, f"must be {length} bytes, got {len(value)}")
    return value


def _check_bytes_list(kind: str, key: str, value: object, length: int) -> tuple[bytes, ...]:
    if not isinstance(value, list | tuple):
        raise _fail(kind, key, f"must be a list of bytes, got {type(value).__name__}")
    return tuple(_check_bytes(kind, f"{key}[{i}]", v, length) for i, v in enumerate(value))


def _check_same_length(kind: str, keys: Sequence[str], *values: Sequence[object]) -> None:
    if len({len(v) for v in values}) > 1:
        raise SecAggMessageError(f"{kind}: fields {list(keys)} must have equal lengths")


def _read(data: object, kind: str, keys: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise SecAggMessageError(f"{kind}: expected a mapping, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    unknown = [k for k in data if k not in keys]
    if missing or unknown:
        raise SecAggMessageError(f"{kind}: missing keys {missing}, unknown keys {unknown}")
    return data


@dataclass(frozen=True)
class Setup:
    """Stage 0, server -> every participant: the rules of the round.

    ``degree`` is ``None`` for the complete graph, else the ``k`` of the
    random ``k``-regular graph derived from ``graph_seed``. ``quant`` must
    have every scale resolved for ``len(participants)`` clients.
    """

    round_id: int
    participants: tuple[int, ...]
    threshold: int
    degree: int | None
    graph_seed: bytes = field(repr=False)
    quant: QuantConfig

    KEYS = (
        "round_id",
        "participants",
        "threshold",
        "neighbourhood",
        "degree",
        "graph_seed",
        "bits",
        "segment_names",
        "segment_lengths",
        "segment_lo",
        "segment_hi",
        "segment_scales",
    )

    def __post_init__(self) -> None:
        kind = "Setup"
        _check_int(kind, "round_id", self.round_id)
        try:
            ids = check_participants(self.participants)
            k = degree_of(len(ids), self.degree)
        except SecAggConfigError as exc:
            raise SecAggMessageError(f"{kind}: {exc}") from None
        _check_int(kind, "threshold", self.threshold, 1, k)
        _check_bytes(kind, "graph_seed", self.graph_seed, GRAPH_SEED_BYTES)
        if any(s.scale is None for s in self.quant.segments):
            raise _fail(kind, "segment_scales", "must all be set")
        try:
            self.quant.check_capacity(len(ids))
        except SecAggConfigError as exc:
            raise SecAggMessageError(f"{kind}: {exc}") from None

    @property
    def k(self) -> int:
        """Number of neighbours of every node."""
        return degree_of(len(self.participants), self.degree)

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        segs = self.quant.segments
        return {
            "round_id": self.round_id,
            "participants": list(self.participants),
            "threshold": self.threshold,
            "neighbourhood": "all" if self.degree is None else "regular",
            "degree": 0 if self.degree is None else self.degree,
            "graph_seed": self.graph_seed,
            "bits": self.quant.bits,
            "segment_names": [s.name for s in segs],
            "segment_lengths": [s.length for s in segs],
            "segment_lo": [float(s.lo) for s in segs],
            "segment_hi": [float(s.hi) for s in segs],
            "segment_scales": [float(s.scale) for s in segs if s.scale is not None],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Setup:
        """Validated inverse of :meth:`to_dict`."""
        kind = "Setup"
        d = _read(data, kind, cls.KEYS)
        neighbourhood = d["neighbourhood"]
        if neighbourhood not in ("all", "regular"):
            raise _fail(kind, "neighbourhood", "must be 'all' or 'regular'")
        degree = None if neighbourhood == "all" else _check_int(kind, "degree", d["degree"], 1)
        return cls(
            round_id=_check_int(kind, "round_id", d["round_id"]),
            participants=_check_ids(kind, "participants", d["participants"]),
            threshold=_check_int(kind, "threshold", d["threshold"], 1),
            degree=degree,
            graph_seed=_check_bytes(kind, "graph_seed", d["graph_seed"], GRAPH_SEED_BYTES),
            quant=_read_quant(kind, d),
        )


def _read_quant(kind: str, d: Mapping[str, Any]) -> QuantConfig:
    keys = ("segment_names", "segment_lengths", "segment_lo", "segment_hi", "segment_scales")
    columns = []
    for key in keys:
        if not isinstance(d[key], list | tuple):
            raise _fail(kind, key, "must be a list")
        columns.append(list(d[key]))
    _check_same_length(kind, keys, *columns)
    try:
        segments = tuple(
            SegmentSpec(
                name=_check_str(kind, "segment_names", name),
                length=_check_int(kind, "segment_lengths", length, 1),
                lo=_check_float(kind, "segment_lo", lo),
                hi=_check_float(kind, "segment_hi", hi),
                scale=_check_float(kind, "segment_scales", scale),
            )
            for name, length, lo, hi, scale in zip(*columns, strict=True)
        )
        return QuantConfig(segments=segments, bits=_check_int(kind, "bits", d["bits"], 32, 64))
    except SecAggConfigError as exc:
        raise SecAggMessageError(f"{kind}: {exc}") from None


def _check_str(kind: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(kind, key, f"must hold strings, got {type(value).__name__}")
    return value


def _check_float(kind: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise _fail(kind, key, f"must hold numbers, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1, client -> server: two fresh X25519 public keys (raw 32 bytes)."""

    round_id: int
    node_id: int
    c_pk: bytes
    s_pk: bytes

    KEYS = ("round_id", "node_id", "c_pk", "s_pk")

    def __post_init__(self) -> None:
        kind = "AdvertiseKeys"
        _check_int(kind, "round_id", self.round_id)
        _check_int(kind, "node_id", self.node_id)
        _check_bytes(kind, "c_pk", self.c_pk, KEY_BYTES)
        _check_bytes(kind, "s_pk", self.s_pk, KEY_BYTES)

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        return {
            "round_id": self.round_id,
            "node_id": self.node_id,
            "c_pk": self.c_pk,
            "s_pk": self.s_pk,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdvertiseKeys:
        """Validated inverse of :meth:`to_dict`."""
        d = _read(data, "AdvertiseKeys", cls.KEYS)
        return cls(round_id=d["round_id"], node_id=d["node_id"], c_pk=d["c_pk"], s_pk=d["s_pk"])


@dataclass(frozen=True)
class PeerKeys:
    """Stage 2, server -> client: public keys of its neighbours still in the round."""

    round_id: int
    node_id: int
    peers: tuple[int, ...]
    c_pks: tuple[bytes, ...]
    s_pks: tuple[bytes, ...]

    KEYS = ("round_id", "node_id", "peers", "c_pks", "s_pks")

    def __post_init__(self) -> None:
        kind = "PeerKeys"
        _check_int(kind, "round_id", self.round_id)
        _check_int(kind, "node_id", self.node_id)
        _check_ids(kind, "peers", self.peers)
        _check_bytes_list(kind, "c_pks", self.c_pks, KEY_BYTES)
        _check_bytes_list(kind, "s_pks", self.s_pks, KEY_BYTES)
        _check_same_length(kind, ("peers", "c_pks", "s_pks"), self.peers, self.c_pks, self.s_pks)

    def __repr__(self) -> str:
        return f"PeerKeys(round_id={self.round_id}, node_id={self.node_id}, peers={self.peers})"

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        return {
            "round_id": self.round_id,
            "node_id": self.node_id,
            "peers": list(self.peers),
            "c_pks": list(self.c_pks),
            "s_pks": list(self.s_pks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeerKeys:
        """Validated inverse of :meth:`to_dict`."""
        kind = "PeerKeys"
        d = _read(data, kind, cls.KEYS)
        return cls(
            round_id=d["round_id"],
            node_id=d["node_id"],
            peers=_check_ids(kind, "peers", d["peers"]),
            c_pks=_check_bytes_list(kind, "c_pks", d["c_pks"], KEY_BYTES),
            s_pks=_check_bytes_list(kind, "s_pks", d["s_pks"], KEY_BYTES),
        )


_R = TypeVar("_R", bound="_Routed")


@dataclass(frozen=True, repr=False)
class _Routed:
    """Ciphertexts keyed by the other endpoint's node id."""

    round_id: int
    node_id: int
    ids: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]

    KIND = "_Routed"
    IDS_KEY = "ids"

    def __post_init__(self) -> None:
        _check_int(self.KIND, "round_id", self.round_id)
        _check_int(self.KIND, "node_id", self.node_id)
        _check_ids(self.KIND, self.IDS_KEY, self.ids)
        _check_bytes_list(self.KIND, "ciphertexts", self.ciphertexts, CIPHERTEXT_BYTES)
        _check_same_length(self.KIND, (self.IDS_KEY, "ciphertexts"), self.ids, self.ciphertexts)

    def __repr__(self) -> str:
        return (
            f"{self.KIND}(round_id={self.round_id}, node_id={self.node_id}, "
            f"{self.IDS_KEY}={self.ids}, ciphertexts=<{len(self.ciphertexts)}>)"
        )

    def as_mapping(self) -> dict[int, bytes]:
        """``other node id -> ciphertext``."""
        return dict(zip(self.ids, self.ciphertexts, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        return {
            "round_id": self.round_id,
            "node_id": self.node_id,
            self.IDS_KEY: list(self.ids),
            "ciphertexts": list(self.ciphertexts),
        }

    @classmethod
    def from_mapping(cls: type[_R], *, round_id: int, node_id: int, ciphertexts: Mapping[int, bytes]) -> _R:
        """Build from ``other node id -> ciphertext`` (ids sorted)."""
        ids = tuple(sorted(ciphertexts))
        return cls(round_id=round_id, node_id=node_id, ids=ids, ciphertexts=tuple(ciphertexts[i] for i in ids))

    @classmethod
    def from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Validated inverse of :meth:`to_dict`."""
        d = _read(data, cls.KIND, ("round_id", "node_id", cls.IDS_KEY, "ciphertexts"))
        return cls(
            round_id=d["round_id"],
            node_id=d["node_id"],
            ids=_check_ids(cls.KIND, cls.IDS_KEY, d[cls.IDS_KEY]),
            ciphertexts=_check_bytes_list(cls.KIND, "ciphertexts", d["ciphertexts"], CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True, repr=False)
class ShareKeys(_Routed):
    """Stage 2, client -> server: one encrypted share pair per receiving neighbour.

    ``ids`` are the receivers (``to_dict`` key ``"receivers"``).
    """

    KIND = "ShareKeys"
    IDS_KEY = "receivers"

    @property
    def receivers(self) -> tuple[int, ...]:
        """Node ids the ciphertexts are addressed to."""
        return self.ids



@dataclass(frozen=True, repr=False)
class RoutedShares(_Routed):
    """Stage 3, server -> client: the share ciphertexts addressed to it.

    ``ids`` are the senders (``to_dict`` key ``"senders"``).
    """

    KIND = "RoutedShares"
    IDS_KEY = "senders"

    @property
    def senders(self) -> tuple[int, ...]:
        """Node ids the ciphertexts come from."""
        return self.ids



@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Stage 3, client -> server: the masked vector over Z_{2^b} (uint32/uint64)."""

    round_id: int
    node_id: int
    masked: np.ndarray

    KEYS = ("round_id", "node_id", "masked")

    def __post_init__(self) -> None:
        kind = "MaskedInput"
        _check_int(kind, "round_id", self.round_id)
        _check_int(kind, "node_id", self.node_id)
        if not isinstance(self.masked, np.ndarray):
            raise _fail(kind, "masked", f"must be a numpy array, got {type(self.masked).__name__}")
        if self.masked.ndim != 1:
            raise _fail(kind, "masked", f"must be 1-D, got shape {self.masked.shape}")
        if self.masked.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise _fail(kind, "masked", f"dtype {self.masked.dtype} is not uint32 or uint64")

    def __repr__(self) -> str:
        return (
            f"MaskedInput(round_id={self.round_id}, node_id={self.node_id}, "
            f"masked=<{self.masked.dtype}[{self.masked.shape[0]}]>)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form (the vector stays a numpy array)."""
        return {"round_id": self.round_id, "node_id": self.node_id, "masked": self.masked}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MaskedInput:
        """Validated inverse of :meth:`to_dict`."""
        d = _read(data, "MaskedInput", cls.KEYS)
        return cls(round_id=d["round_id"], node_id=d["node_id"], masked=d["masked"])


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, server -> surviving client: which neighbours survived or dropped."""

    round_id: int
    node_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    KEYS = ("round_id", "node_id", "survivors", "dropped")

    def __post_init__(self) -> None:
        kind = "UnmaskRequest"
        _check_int(kind, "round_id", self.round_id)
        _check_int(kind, "node_id", self.node_id)
        _check_ids(kind, "survivors", self.survivors)
        _check_ids(kind, "dropped", self.dropped)

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        return {
            "round_id": self.round_id,
            "node_id": self.node_id,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnmaskRequest:
        """Validated inverse of :meth:`to_dict`."""
        kind = "UnmaskRequest"
        d = _read(data, kind, cls.KEYS)
        return cls(
            round_id=d["round_id"],
            node_id=d["node_id"],
            survivors=_check_ids(kind, "survivors", d["survivors"]),
            dropped=_check_ids(kind, "dropped", d["dropped"]),
        )


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4, client -> server: shares of ``b`` for survivors, of ``s_sk`` for dropped.

    Shares are 66-byte big-endian field elements; the repr shows only counts.
    """

    round_id: int
    node_id: int
    survivors: tuple[int, ...]
    seed_shares: tuple[bytes, ...]
    dropped: tuple[int, ...]
    key_shares: tuple[bytes, ...]

    KEYS = ("round_id", "node_id", "survivors", "seed_shares", "dropped", "key_shares")

    def __post_init__(self) -> None:
        kind = "UnmaskResponse"
        _check_int(kind, "round_id", self.round_id)
        _check_int(kind, "node_id", self.node_id)
        _check_ids(kind, "survivors", self.survivors)
        _check_ids(kind, "dropped", self.dropped)
        _check_bytes_list(kind, "seed_shares", self.seed_shares, ELEMENT_BYTES)
        _check_bytes_list(kind, "key_shares", self.key_shares, ELEMENT_BYTES)
        _check_same_length(kind, ("survivors", "seed_shares"), self.survivors, self.seed_shares)
        _check_same_length(kind, ("dropped", "key_shares"), self.dropped, self.key_shares)

    def __repr__(self) -> str:
        return (
            f"UnmaskResponse(round_id={self.round_id}, node_id={self.node_id}, "
            f"survivors={self.survivors}, dropped={self.dropped}, shares=<redacted>)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        return {
            "round_id": self.round_id,
            "node_id": self.node_id,
            "survivors": list(self.survivors),
            "seed_shares": list(self.seed_shares),
            "dropped": list(self.dropped),
            "key_shares": list(self.key_shares),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnmaskResponse:
        """Validated inverse of :meth:`to_dict`."""
        kind = "UnmaskResponse"
        d = _read(data, kind, cls.KEYS)
        return cls(
            round_id=d["round_id"],
            node_id=d["node_id"],
            survivors=_check_ids(kind, "survivors", d["survivors"]),
            seed_shares=_check_bytes_list(kind, "seed_shares", d["seed_shares"], ELEMENT_BYTES),
            dropped=_check_ids(kind, "dropped", d["dropped"]),
            key_shares=_check_bytes_list(kind, "key_shares", d["key_shares"], ELEMENT_BYTES),
        )


Message = (
    Setup
    | AdvertiseKeys
    | PeerKeys
    | ShareKeys
    | RoutedShares
    | MaskedInput
    | UnmaskRequest
    | UnmaskResponse
)
"""Any protocol message."""

M = TypeVar(
    "M",
    Setup,
    AdvertiseKeys,
    PeerKeys,
    ShareKeys,
    RoutedShares,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)


def coerce(cls: type[M], message: object) -> M:
    """Accept either a message of ``cls`` or its ``to_dict`` form."""
    if isinstance(message, cls):
        return message
    if isinstance(message, Mapping):
        return cls.from_dict(message)
    raise SecAggMessageError(
        f"expected {cls.__name__} or its dict form, got {type(message).__name__}"
    )


def payload_size(message: Message) -> int:
    """Approximate bytes on the wire: raw bytes and arrays plus 8 per number.

    Counts the payload of :meth:`to_dict` values only (no keys, no framing),
    which is what grows with the cohort and the vector.
    """
    return sum(_value_size(v) for v in message.to_dict().values())


def _value_size(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, list | tuple):
        return sum(_value_size(v) for v in value)
    return 8
