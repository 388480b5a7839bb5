"""The messages that cross the wire: one frozen dataclass per stage, one generic codec.

Each message declares its wire fields once (:data:`_Codec.FIELDS`, a tuple of
:class:`Field`: name, kind and, for byte strings, the exact length). From
that declaration alone the codec

* validates every field when a message is built (``__post_init__``),
* flattens it into values a Flower record holds (:meth:`_Codec.to_dict`:
  ``int``, ``float``, ``str``, ``bytes``, lists of one of those, numpy arrays;
  node ids up to 2^64 - 1 fit Flower's unsigned integer values), and
* checks every key, type, length and range of a received dict before building
  the message again (:meth:`_Codec.from_dict`), raising
  :class:`~fedrec.errors.SecAggMessageError` naming the message and the field.

Cross-field rules (equal lengths of parallel lists, the setup's threshold and
ring) are each class's ``_check``. :class:`Setup` carries its quantization
layout as five parallel columns (``_flat_extra``/``_parse_extra``). Checks
that need round state (is this sender a participant, is this vector the right
length for the layout, does this signature verify) are made by the receiving
party.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from fedrec.errors import SecAggConfigError, SecAggMessageError
from fedrec.secagg.crypto.identity import CERTIFICATE_BYTES, SIGNATURE_BYTES
from fedrec.secagg.crypto.keys import CIPHERTEXT_BYTES, KEY_BYTES
from fedrec.secagg.crypto.shamir import ELEMENT_BYTES
from fedrec.secagg.graph import GRAPH_SEED_BYTES, check_participants, degree_of
from fedrec.secagg.quantize import QuantConfig, SegmentSpec

__all__ = [
    "AdvertiseKeys",
    "Field",
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
    "setup_digest",
]

_MAX_U64 = (1 << 64) - 1
DIGEST_BYTES = 32

Kind = Literal["u64", "ids", "bytes", "bytes_list", "uint_array"]


@dataclass(frozen=True)
class Field:
    """One wire field: attribute ``name`` (also its dict key unless ``key``), its ``kind``, byte ``length``."""

    name: str
    kind: Kind
    length: int = 0
    key: str = ""

    @property
    def wire_key(self) -> str:
        """The key of the field in the dict form."""
        return self.key or self.name


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


def _check_array(kind: str, key: str, value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _fail(kind, key, f"must be a numpy array, got {type(value).__name__}")
    if value.ndim != 1:
        raise _fail(kind, key, f"must be 1-D, got shape {value.shape}")
    if value.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise _fail(kind, key, f"dtype {value.dtype} is not uint32 or uint64")
    return value


def _parse(kind: str, f: Field, value: object) -> Any:
    """Check one field's value (attribute or wire form) and return it in attribute form."""
    key = f.wire_key
    if f.kind == "u64":
        return _check_int(kind, key, value)
    if f.kind == "ids":
        return _check_ids(kind, key, value)
    if f.kind == "bytes":
        return _check_bytes(kind, key, value, f.length)
    if f.kind == "bytes_list":
        return _check_bytes_list(kind, key, value, f.length)
    return _check_array(kind, key, value)


def _flat(f: Field, value: Any) -> Any:
    return list(value) if f.kind in ("ids", "bytes_list") else value


def _same_length(kind: str, *pairs: tuple[str, tuple[Any, ...]]) -> None:
    if len({len(v) for _, v in pairs}) > 1:
        raise SecAggMessageError(f"{kind}: fields {[k for k, _ in pairs]} must have equal lengths")


class _Codec:
    """The generic codec: everything from :data:`FIELDS`."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()
    EXTRA_KEYS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        kind = type(self).__name__
        for f in self.FIELDS:
            _parse(kind, f, getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        """Cross-field rules; none by default."""

    def _flat_extra(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _parse_extra(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key of the dict form, in order."""
        return tuple(f.wire_key for f in cls.FIELDS) + cls.EXTRA_KEYS

    def to_dict(self) -> dict[str, Any]:
        """Flat record-compatible form."""
        out = {f.wire_key: _flat(f, getattr(self, f.name)) for f in self.FIELDS}
        out.update(self._flat_extra())
        return out

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Validated inverse of :meth:`to_dict`."""
        kind = cls.__name__
        if not isinstance(data, Mapping):
            raise SecAggMessageError(f"{kind}: expected a mapping, got {type(data).__name__}")
        keys = cls.keys()
        missing = [k for k in keys if k not in data]
        unknown = [k for k in data if k not in keys]
        if missing or unknown:
            raise SecAggMessageError(f"{kind}: missing keys {missing}, unknown keys {unknown}")
        values = {f.name: _parse(kind, f, data[f.wire_key]) for f in cls.FIELDS}
        values.update(cls._parse_extra(data))
        return cls(**values)


_C = TypeVar("_C", bound=_Codec)


@dataclass(frozen=True)
class Setup(_Codec):
    """Stage 0, server -> every participant: the rules of the round.

    ``degree`` is ``None`` for the complete graph, else the ``k`` of the
    random ``k``-regular graph. ``graph_seed`` is the server's nonce: the graph
    itself comes from :func:`fedrec.secagg.graph.graph_seed` over it and every
    signed advertisement. ``quant`` must have every scale resolved for
    ``len(participants)`` clients.
    """

    round_id: int
    participants: tuple[int, ...]
    threshold: int
    degree: int | None
    graph_seed: bytes = field(repr=False)
    quant: QuantConfig

    FIELDS = (Field("round_id", "u64"), Field("participants", "ids"), Field("threshold", "u64"),
              Field("graph_seed", "bytes", GRAPH_SEED_BYTES))
    EXTRA_KEYS = ("neighbourhood", "degree", "bits", "segment_names", "segment_lengths", "segment_lo",
                  "segment_hi", "segment_scales")

    def _check(self) -> None:
        kind = "Setup"
        try:
            ids = check_participants(self.participants)
            k = degree_of(len(ids), self.degree)
        except SecAggConfigError as exc:
            raise SecAggMessageError(f"{kind}: {exc}") from None
        _check_int(kind, "threshold", self.threshold, 1, k)
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

    def _flat_extra(self) -> dict[str, Any]:
        segs = self.quant.segments
        return {
            "neighbourhood": "all" if self.degree is None else "regular",
            "degree": 0 if self.degree is None else self.degree,
            "bits": self.quant.bits,
            "segment_names": [s.name for s in segs],
            "segment_lengths": [s.length for s in segs],
            "segment_lo": [float(s.lo) for s in segs],
            "segment_hi": [float(s.hi) for s in segs],
            "segment_scales": [float(s.scale) for s in segs if s.scale is not None],
        }

    @classmethod
    def _parse_extra(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        kind = "Setup"
        neighbourhood = data["neighbourhood"]
        if neighbourhood not in ("all", "regular"):
            raise _fail(kind, "neighbourhood", "must be 'all' or 'regular'")
        degree = None if neighbourhood == "all" else _check_int(kind, "degree", data["degree"], 1)
        return {"degree": degree, "quant": _read_quant(kind, data)}


def _read_quant(kind: str, d: Mapping[str, Any]) -> QuantConfig:
    keys = ("segment_names", "segment_lengths", "segment_lo", "segment_hi", "segment_scales")
    columns = []
    for key in keys:
        if not isinstance(d[key], list | tuple):
            raise _fail(kind, key, "must be a list")
        columns.append(tuple(d[key]))
    _same_length(kind, *zip(keys, columns, strict=True))
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
class AdvertiseKeys(_Codec):
    """Stage 1, client -> server: two fresh X25519 public keys, signed with the device's identity key.

    ``signature`` covers :func:`fedrec.secagg.crypto.identity.advert_statement`
    (round, stage, node, both keys, ``certificate``).
    """

    round_id: int
    node_id: int
    c_pk: bytes
    s_pk: bytes
    certificate: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    FIELDS = (Field("round_id", "u64"), Field("node_id", "u64"), Field("c_pk", "bytes", KEY_BYTES),
              Field("s_pk", "bytes", KEY_BYTES), Field("certificate", "bytes", CERTIFICATE_BYTES),
              Field("signature", "bytes", SIGNATURE_BYTES))


@dataclass(frozen=True)
class PeerKeys(_Codec):
    """Stage 2, server -> client: every advertiser's digest, and its neighbours' signed advertisements.

    ``advertisers``/``digests`` list every node whose advertisement the server
    accepted (the graph seed hashes them); ``peers`` and the parallel lists are
    the advertisements of this node's neighbours among them.
    """

    round_id: int
    node_id: int
    peers: tuple[int, ...]
    c_pks: tuple[bytes, ...]
    s_pks: tuple[bytes, ...]
    certificates: tuple[bytes, ...]
    signatures: tuple[bytes, ...]
    advertisers: tuple[int, ...]
    digests: tuple[bytes, ...]

    FIELDS = (Field("round_id", "u64"), Field("node_id", "u64"), Field("peers", "ids"),
              Field("c_pks", "bytes_list", KEY_BYTES), Field("s_pks", "bytes_list", KEY_BYTES),
              Field("certificates", "bytes_list", CERTIFICATE_BYTES),
              Field("signatures", "bytes_list", SIGNATURE_BYTES), Field("advertisers", "ids"),
              Field("digests", "bytes_list", DIGEST_BYTES))

    def _check(self) -> None:
        _same_length("PeerKeys", ("peers", self.peers), ("c_pks", self.c_pks), ("s_pks", self.s_pks),
                     ("certificates", self.certificates), ("signatures", self.signatures))
        _same_length("PeerKeys", ("advertisers", self.advertisers), ("digests", self.digests))

    def __repr__(self) -> str:
        return (f"PeerKeys(round_id={self.round_id}, node_id={self.node_id}, peers={self.peers}, "
                f"advertisers=<{len(self.advertisers)}>)")

    def digest_map(self) -> dict[int, bytes]:
        """``advertiser -> digest of its signed advertisement``."""
        return dict(zip(self.advertisers, self.digests, strict=True))


_R = TypeVar("_R", bound="_Routed")


@dataclass(frozen=True, repr=False)
class _Routed(_Codec):
    """Ciphertexts keyed by the other endpoint's node id."""

    round_id: int
    node_id: int
    ids: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]

    IDS_KEY: ClassVar[str] = "ids"

    def _check(self) -> None:
        _same_length(type(self).__name__, (self.IDS_KEY, self.ids), ("ciphertexts", self.ciphertexts))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(round_id={self.round_id}, node_id={self.node_id}, "
            f"{self.IDS_KEY}={self.ids}, ciphertexts=<{len(self.ciphertexts)}>)"
        )

    def as_mapping(self) -> dict[int, bytes]:
        """``other node id -> ciphertext``."""
        return dict(zip(self.ids, self.ciphertexts, strict=True))

    @classmethod
    def from_mapping(cls: type[_R], *, round_id: int, node_id: int, ciphertexts: Mapping[int, bytes]) -> _R:
        """Build from ``other node id -> ciphertext`` (ids sorted)."""
        ids = tuple(sorted(ciphertexts))
        return cls(round_id=round_id, node_id=node_id, ids=ids, ciphertexts=tuple(ciphertexts[i] for i in ids))


def _routed_fields(ids_key: str) -> tuple[Field, ...]:
    return (Field("round_id", "u64"), Field("node_id", "u64"), Field("ids", "ids", key=ids_key),
            Field("ciphertexts", "bytes_list", CIPHERTEXT_BYTES))


@dataclass(frozen=True, repr=False)
class ShareKeys(_Routed):
    """Stage 2, client -> server: one encrypted share pair per receiving neighbour (``ids``: receivers)."""

    IDS_KEY = "receivers"
    FIELDS = _routed_fields("receivers")

    @property
    def receivers(self) -> tuple[int, ...]:
        """Node ids the ciphertexts are addressed to."""
        return self.ids


@dataclass(frozen=True, repr=False)
class RoutedShares(_Routed):
    """Stage 3, server -> client: the share ciphertexts addressed to it (``ids``: senders)."""

    IDS_KEY = "senders"
    FIELDS = _routed_fields("senders")

    @property
    def senders(self) -> tuple[int, ...]:
        """Node ids the ciphertexts come from."""
        return self.ids


@dataclass(frozen=True, eq=False)
class MaskedInput(_Codec):
    """Stage 3, client -> server: the masked vector over Z_{2^b} (uint32/uint64)."""

    round_id: int
    node_id: int
    masked: np.ndarray

    FIELDS = (Field("round_id", "u64"), Field("node_id", "u64"), Field("masked", "uint_array"))

    def __repr__(self) -> str:
        return (
            f"MaskedInput(round_id={self.round_id}, node_id={self.node_id}, "
            f"masked=<{self.masked.dtype}[{self.masked.shape[0]}]>)"
        )


@dataclass(frozen=True)
class UnmaskRequest(_Codec):
    """Stage 4, server -> surviving client: which neighbours survived or dropped."""

    round_id: int
    node_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    FIELDS = (Field("round_id", "u64"), Field("node_id", "u64"), Field("survivors", "ids"),
              Field("dropped", "ids"))


@dataclass(frozen=True)
class UnmaskResponse(_Codec):
    """Stage 4, client -> server: shares of ``b`` for survivors, of ``s_sk`` for dropped.

    Shares are 66-byte big-endian field elements; the repr shows only counts.
    """

    round_id: int
    node_id: int
    survivors: tuple[int, ...]
    seed_shares: tuple[bytes, ...]
    dropped: tuple[int, ...]
    key_shares: tuple[bytes, ...]

    FIELDS = (Field("round_id", "u64"), Field("node_id", "u64"), Field("survivors", "ids"),
              Field("seed_shares", "bytes_list", ELEMENT_BYTES), Field("dropped", "ids"),
              Field("key_shares", "bytes_list", ELEMENT_BYTES))

    def _check(self) -> None:
        _same_length("UnmaskResponse", ("survivors", self.survivors), ("seed_shares", self.seed_shares))
        _same_length("UnmaskResponse", ("dropped", self.dropped), ("key_shares", self.key_shares))

    def __repr__(self) -> str:
        return (
            f"UnmaskResponse(round_id={self.round_id}, node_id={self.node_id}, "
            f"survivors={self.survivors}, dropped={self.dropped}, shares=<redacted>)"
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


def setup_digest(setup: Setup) -> bytes:
    """SHA-256 of a setup in canonical form; every advertisement signs it (a split view is refused).

    ``b"fedrec-secagg setup v1\\0"`` then :meth:`Setup.to_dict` as UTF-8 JSON
    with sorted keys, no spaces, bytes as lowercase hex (pinned by a known-answer test).
    """
    form = {k: v.hex() if isinstance(v, bytes) else v for k, v in setup.to_dict().items()}
    text = json.dumps(form, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"fedrec-secagg setup v1\x00" + text.encode()).digest()


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
