"""A client's round state as named numpy arrays, so it survives between stages.

In Flower each stage of a round may run in a different worker process; only
the device's state mapping (``Context.state``, :data:`DeviceState`) persists.
:func:`encode` turns a :class:`ClientSnapshot` into arrays under keys starting
with :data:`PREFIX` and :func:`decode` checks and rebuilds it. Raw bytes
(keys, seeds, shares) are stored as ``uint8`` arrays, node ids as ``uint64``.

With pipelined rounds a device takes part in up to two rounds at once (the
mask and unmask stages of one, the setup and share stages of the next), so the
device mapping keeps each live round's snapshot under its own key,
``secagg.<round id>`` (:func:`store_round`, :func:`load_round`,
:func:`drop_round`, :func:`live_rounds`), next to the device-wide
``secagg.last_round``; everything shares the mapping with other device state.
A round's snapshot is stored as ONE ``uint8`` array (:func:`pack`: a JSON
header naming each array's key, dtype and shape, then their raw bytes), not as
its two dozen arrays: Flower serializes every array of the device state on
every message, and per array that costs more than the whole container.

Snapshot keys (``n`` participants, ``k`` neighbours, ``m`` peers whose keys
arrived, ``h`` peers whose shares arrived, ``s`` segments)::

    secagg.last_round          uint64[1]   latest round begun (device-wide, not namespaced)
    secagg.format              uint8[1]    layout version (1)
    secagg.node_id             uint64[1]
    secagg.stage               uint8[1]    new advertised shared masked done aborted
    secagg.flags               uint8[1]    bit 0: minority threshold accepted
    secagg.round_id            uint64[1]   from the setup on
    secagg.participants        uint64[n]
    secagg.threshold           uint64[1]
    secagg.degree              uint64[1]   0 = complete graph
    secagg.graph_seed          uint8[32]
    secagg.quant.bits          uint8[1]
    secagg.quant.names         uint8[*]    UTF-8 names, concatenated
    secagg.quant.name_lengths  uint64[s]
    secagg.quant.lengths       uint64[s]
    secagg.quant.bounds        float64[s,3] lo, hi, scale
    secagg.neighbours          uint64[k]
    secagg.c_sk, secagg.s_sk   uint8[32]   advertised only
    secagg.seed                uint8[32]   advertised, shared
    secagg.peers               uint64[m]   shared
    secagg.share_keys          uint8[m,32] shared
    secagg.mask_seeds          uint8[m,32] shared
    secagg.held_from           uint64[h]   masked
    secagg.held                uint8[h,2,66] masked: (seed share, key share)
    secagg.answer.survivors    uint64[*]   done: the split answered
    secagg.answer.seed_shares  uint8[*,66]
    secagg.answer.dropped      uint64[*]
    secagg.answer.key_shares   uint8[*,66]

Secret arrays are plain numpy arrays: the mapping itself must stay on the
device. Nothing here logs or reprs a value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrec.secagg.errors import SecAggError, SecAggMessageError
from fedrec.secagg.field import ELEMENT_BYTES, PRIME
from fedrec.secagg.graph import GRAPH_SEED_BYTES
from fedrec.secagg.keys import KEY_BYTES
from fedrec.secagg.messages import Setup, UnmaskResponse
from fedrec.secagg.quantize import QuantConfig, SegmentSpec

__all__ = [
    "FORMAT",
    "PREFIX",
    "STAGES",
    "ClientSnapshot",
    "DeviceState",
    "SecAggStateError",
    "clear_state",
    "decode",
    "drop_round",
    "encode",
    "last_round",
    "live_rounds",
    "load_round",
    "pack",
    "round_key",
    "store_round",
    "stored_round",
    "stored_stage",
    "unpack",
]

DeviceState = MutableMapping[str, np.ndarray]
"""A device's private state: named numpy arrays (``fedrec.federated.device.DeviceState``)."""

PREFIX = "secagg."
FORMAT = 1
STAGES = ("new", "advertised", "shared", "masked", "done", "aborted")
"""Client stages in the order of their ``secagg.stage`` codes."""

K_LAST_ROUND = PREFIX + "last_round"
K_FORMAT = PREFIX + "format"
K_NODE = PREFIX + "node_id"
K_STAGE = PREFIX + "stage"
K_FLAGS = PREFIX + "flags"
K_ROUND = PREFIX + "round_id"
K_PARTICIPANTS = PREFIX + "participants"
K_THRESHOLD = PREFIX + "threshold"
K_DEGREE = PREFIX + "degree"
K_GRAPH_SEED = PREFIX + "graph_seed"
K_BITS = PREFIX + "quant.bits"
K_NAMES = PREFIX + "quant.names"
K_NAME_LENGTHS = PREFIX + "quant.name_lengths"
K_LENGTHS = PREFIX + "quant.lengths"
K_BOUNDS = PREFIX + "quant.bounds"
K_NEIGHBOURS = PREFIX + "neighbours"
K_C_SK = PREFIX + "c_sk"
K_S_SK = PREFIX + "s_sk"
K_SEED = PREFIX + "seed"
K_PEERS = PREFIX + "peers"
K_SHARE_KEYS = PREFIX + "share_keys"
K_MASK_SEEDS = PREFIX + "mask_seeds"
K_HELD_FROM = PREFIX + "held_from"
K_HELD = PREFIX + "held"
K_ANS_SURVIVORS = PREFIX + "answer.survivors"
K_ANS_SEEDS = PREFIX + "answer.seed_shares"
K_ANS_DROPPED = PREFIX + "answer.dropped"
K_ANS_KEYS = PREFIX + "answer.key_shares"

_FLAG_MINORITY = 1
_U8 = np.dtype(np.uint8)
_U64 = np.dtype(np.uint64)
_F64 = np.dtype(np.float64)


class SecAggStateError(SecAggMessageError):
    """Stored secure-aggregation state is missing, inconsistent or from another layout."""


@dataclass(repr=False)
class ClientSnapshot:
    """Everything a :class:`~fedrec.secagg.SecAggClient` needs to continue its round.

    Fields hold secrets; the repr shows only the node, stage and round.
    """

    node_id: int
    stage: str
    allow_minority_threshold: bool = False
    setup: Setup | None = None
    neighbours: frozenset[int] = frozenset()
    c_sk: bytes | None = None
    s_sk: bytes | None = None
    seed: bytes | None = None
    share_keys: dict[int, bytes] = field(default_factory=dict)
    mask_seeds: dict[int, bytes] = field(default_factory=dict)
    held: dict[int, tuple[int, int]] = field(default_factory=dict)
    answer: UnmaskResponse | None = None

    def __repr__(self) -> str:
        round_id = None if self.setup is None else self.setup.round_id
        return (
            f"ClientSnapshot(node_id={self.node_id}, stage={self.stage!r}, "
            f"round_id={round_id}, secrets=<redacted>)"
        )


# -- encoding ---------------------------------------------------------------


def _scalar(value: int, dtype: np.dtype) -> np.ndarray:
    return np.array([value], dtype=dtype)


def _ids(values: Sequence[int] | frozenset[int]) -> np.ndarray:
    return np.array(sorted(values) if isinstance(values, frozenset) else list(values), dtype=_U64)


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_U8).copy()


def _rows(items: Sequence[bytes], width: int) -> np.ndarray:
    return np.frombuffer(b"".join(items), dtype=_U8).reshape(len(items), width).copy()


def _elements(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(ELEMENT_BYTES, "big") for v in values)


def _encode_setup(setup: Setup, out: dict[str, np.ndarray]) -> None:
    segments = setup.quant.segments
    names = [s.name.encode() for s in segments]
    out[K_ROUND] = _scalar(setup.round_id, _U64)
    out[K_PARTICIPANTS] = _ids(setup.participants)
    out[K_THRESHOLD] = _scalar(setup.threshold, _U64)
    out[K_DEGREE] = _scalar(0 if setup.degree is None else setup.degree, _U64)
    out[K_GRAPH_SEED] = _blob(setup.graph_seed)
    out[K_BITS] = _scalar(setup.quant.bits, _U8)
    out[K_NAMES] = _blob(b"".join(names))
    out[K_NAME_LENGTHS] = np.array([len(n) for n in names], dtype=_U64)
    out[K_LENGTHS] = np.array([s.length for s in segments], dtype=_U64)
    out[K_BOUNDS] = np.array(
        [(s.lo, s.hi, s.scale if s.scale is not None else np.nan) for s in segments], dtype=_F64
    ).reshape(len(segments), 3)


def encode(snapshot: ClientSnapshot) -> dict[str, np.ndarray]:
    """The snapshot as ``secagg.*`` arrays (``secagg.last_round`` included once a round began)."""
    if snapshot.stage not in STAGES:
        raise SecAggStateError(f"device state: unknown stage {snapshot.stage!r}")
    flags = _FLAG_MINORITY if snapshot.allow_minority_threshold else 0
    out: dict[str, np.ndarray] = {
        K_FORMAT: _scalar(FORMAT, _U8),
        K_NODE: _scalar(snapshot.node_id, _U64),
        K_STAGE: _scalar(STAGES.index(snapshot.stage), _U8),
        K_FLAGS: _scalar(flags, _U8),
    }
    if snapshot.setup is not None:
        _encode_setup(snapshot.setup, out)
        out[K_LAST_ROUND] = _scalar(snapshot.setup.round_id, _U64)
        out[K_NEIGHBOURS] = _ids(snapshot.neighbours)
    for key, secret in ((K_C_SK, snapshot.c_sk), (K_S_SK, snapshot.s_sk), (K_SEED, snapshot.seed)):
        if secret is not None:
            out[key] = _blob(secret)
    if snapshot.share_keys or snapshot.mask_seeds:
        peers = sorted(snapshot.share_keys)
        if sorted(snapshot.mask_seeds) != peers:
            raise SecAggStateError("device state: share keys and mask seeds name different peers")
        out[K_PEERS] = _ids(peers)
        out[K_SHARE_KEYS] = _rows([snapshot.share_keys[p] for p in peers], KEY_BYTES)
        out[K_MASK_SEEDS] = _rows([snapshot.mask_seeds[p] for p in peers], KEY_BYTES)
    if snapshot.held:
        senders = sorted(snapshot.held)
        flat = [v for s in senders for v in snapshot.held[s]]
        out[K_HELD_FROM] = _ids(senders)
        out[K_HELD] = np.frombuffer(_elements(flat), dtype=_U8).reshape(len(senders), 2, ELEMENT_BYTES).copy()
    if snapshot.answer is not None:
        answer = snapshot.answer
        out[K_ANS_SURVIVORS] = _ids(answer.survivors)
        out[K_ANS_SEEDS] = _rows(answer.seed_shares, ELEMENT_BYTES)
        out[K_ANS_DROPPED] = _ids(answer.dropped)
        out[K_ANS_KEYS] = _rows(answer.key_shares, ELEMENT_BYTES)
    return out


# -- decoding ---------------------------------------------------------------


def _get(state: Mapping[str, np.ndarray], key: str, dtype: np.dtype, shape: tuple[int | None, ...]) -> np.ndarray:
    if key not in state:
        raise SecAggStateError(f"device state: key {key!r} is missing")
    value = state[key]
    if not isinstance(value, np.ndarray):
        raise SecAggStateError(f"device state: {key!r} is a {type(value).__name__}, not a numpy array")
    if value.dtype != dtype:
        raise SecAggStateError(f"device state: {key!r} has dtype {value.dtype}, expected {dtype}")
    if value.ndim != len(shape) or any(n is not None and n != d for n, d in zip(shape, value.shape, strict=True)):
        raise SecAggStateError(f"device state: {key!r} has shape {value.shape}, expected {shape}")
    return value


def _get_int(state: Mapping[str, np.ndarray], key: str, dtype: np.dtype = _U64) -> int:
    return int(_get(state, key, dtype, (1,))[0])


def _get_ids(state: Mapping[str, np.ndarray], key: str) -> list[int]:
    ids: list[int] = _get(state, key, _U64, (None,)).tolist()
    return ids


def _get_bytes(state: Mapping[str, np.ndarray], key: str, length: int) -> bytes:
    return _get(state, key, _U8, (length,)).tobytes()


def _get_rows(state: Mapping[str, np.ndarray], key: str, count: int, width: int) -> list[bytes]:
    data = _get(state, key, _U8, (count, width)).tobytes()
    return [data[i * width : (i + 1) * width] for i in range(count)]


def _element(data: bytes, key: str) -> int:
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise SecAggStateError(f"device state: {key!r} holds a value outside the field")
    return value


def _decode_setup(state: Mapping[str, np.ndarray]) -> Setup:
    lengths = _get_ids(state, K_LENGTHS)
    s = len(lengths)
    name_lengths = _get(state, K_NAME_LENGTHS, _U64, (s,)).tolist()
    names_blob = _get(state, K_NAMES, _U8, (sum(name_lengths),)).tobytes()
    bounds = _get(state, K_BOUNDS, _F64, (s, 3)).tolist()
    degree = _get_int(state, K_DEGREE)
    try:
        names, start = [], 0
        for size in name_lengths:
            names.append(names_blob[start : start + size].decode())
            start += size
        quant = QuantConfig(
            segments=tuple(
                SegmentSpec(name=name, length=length, lo=lo, hi=hi, scale=scale)
                for name, length, (lo, hi, scale) in zip(names, lengths, bounds, strict=True)
            ),
            bits=_get_int(state, K_BITS, _U8),
        )
        return Setup(
            round_id=_get_int(state, K_ROUND),
            participants=tuple(_get_ids(state, K_PARTICIPANTS)),
            threshold=_get_int(state, K_THRESHOLD),
            degree=None if degree == 0 else degree,
            graph_seed=_get_bytes(state, K_GRAPH_SEED, GRAPH_SEED_BYTES),
            quant=quant,
        )
    except SecAggStateError:
        raise
    except (SecAggError, UnicodeDecodeError) as exc:
        raise SecAggStateError(f"device state: stored setup is invalid: {exc}") from None


def _decode_routing(state: Mapping[str, np.ndarray], snap: ClientSnapshot) -> None:
    peers = _get_ids(state, K_PEERS)
    share_keys = _get_rows(state, K_SHARE_KEYS, len(peers), KEY_BYTES)
    mask_seeds = _get_rows(state, K_MASK_SEEDS, len(peers), KEY_BYTES)
    snap.share_keys = dict(zip(peers, share_keys, strict=True))
    snap.mask_seeds = dict(zip(peers, mask_seeds, strict=True))


def _decode_held(state: Mapping[str, np.ndarray], snap: ClientSnapshot) -> None:
    senders = _get_ids(state, K_HELD_FROM)
    data = _get(state, K_HELD, _U8, (len(senders), 2, ELEMENT_BYTES)).tobytes()
    width = ELEMENT_BYTES
    snap.held = {
        sender: (
            _element(data[2 * i * width : (2 * i + 1) * width], K_HELD),
            _element(data[(2 * i + 1) * width : (2 * i + 2) * width], K_HELD),
        )
        for i, sender in enumerate(senders)
    }


def _decode_answer(state: Mapping[str, np.ndarray], snap: ClientSnapshot, setup: Setup) -> None:
    survivors = _get_ids(state, K_ANS_SURVIVORS)
    dropped = _get_ids(state, K_ANS_DROPPED)
    seeds = _get_rows(state, K_ANS_SEEDS, len(survivors), ELEMENT_BYTES)
    keys = _get_rows(state, K_ANS_KEYS, len(dropped), ELEMENT_BYTES)
    try:
        snap.answer = UnmaskResponse(
            round_id=setup.round_id,
            node_id=snap.node_id,
            survivors=tuple(survivors),
            seed_shares=tuple(seeds),
            dropped=tuple(dropped),
            key_shares=tuple(keys),
        )
    except SecAggError as exc:
        raise SecAggStateError(f"device state: stored unmask answer is invalid: {exc}") from None


def decode(state: Mapping[str, np.ndarray]) -> ClientSnapshot:
    """Rebuild the snapshot stored by :func:`encode`; keys of other owners are ignored.

    Raises
    ------
    SecAggStateError
        No client is stored, the layout version differs, or a key the stage
        needs is missing or has the wrong dtype, shape or value.
    """
    if K_NODE not in state:
        raise SecAggStateError("device state: no secure-aggregation client is stored")
    version = _get_int(state, K_FORMAT, _U8)
    if version != FORMAT:
        raise SecAggStateError(f"device state: layout version {version}, expected {FORMAT}")
    code = _get_int(state, K_STAGE, _U8)
    if code >= len(STAGES):
        raise SecAggStateError(f"device state: unknown stage code {code}")
    stage = STAGES[code]
    snap = ClientSnapshot(
        node_id=_get_int(state, K_NODE),
        stage=stage,
        allow_minority_threshold=bool(_get_int(state, K_FLAGS, _U8) & _FLAG_MINORITY),
    )
    if stage == "new" or (stage == "aborted" and K_ROUND not in state):
        return snap
    setup = snap.setup = _decode_setup(state)
    snap.neighbours = frozenset(_get_ids(state, K_NEIGHBOURS))
    if stage == "advertised":
        snap.c_sk = _get_bytes(state, K_C_SK, KEY_BYTES)
        snap.s_sk = _get_bytes(state, K_S_SK, KEY_BYTES)
    if stage in ("advertised", "shared"):
        snap.seed = _get_bytes(state, K_SEED, KEY_BYTES)
    if stage == "shared":
        _decode_routing(state, snap)
    elif stage == "masked":
        _decode_held(state, snap)
    elif stage == "done":
        _decode_answer(state, snap, setup)
    return snap


# -- housekeeping -----------------------------------------------------------


def round_key(round_id: int) -> str:
    """Key of one round's packed snapshot in the device mapping: ``secagg.<round id>``."""
    return f"{PREFIX}{round_id}"


def _round_of_key(key: str) -> int | None:
    rest = key[len(PREFIX) :]
    return int(rest) if key.startswith(PREFIX) and rest.isdigit() else None


_PACKED_DTYPES: dict[str, np.dtype] = {_U8.str: _U8, _U64.str: _U64, _F64.str: _F64}
_HEADER_BYTES = 4


def pack(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Named ``uint8``/``uint64``/``float64`` arrays as one ``uint8`` array (:func:`unpack` reverses it).

    Layout: a 4-byte big-endian header length, a JSON list of ``[name,
    dtype, shape]``, then each array's bytes in that order.

    Raises
    ------
    SecAggStateError
        An array has another dtype.
    """
    entries, chunks = [], []
    for name, value in arrays.items():
        arr = np.asarray(value, order="C")
        if arr.dtype.str not in _PACKED_DTYPES:
            raise SecAggStateError(f"device state: cannot pack {name!r} of dtype {arr.dtype}")
        entries.append([name, arr.dtype.str, list(arr.shape)])
        chunks.append(arr.tobytes())
    header = json.dumps(entries, separators=(",", ":")).encode()
    blob = len(header).to_bytes(_HEADER_BYTES, "big") + header + b"".join(chunks)
    return np.frombuffer(blob, dtype=_U8).copy()


def unpack(blob: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays :func:`pack` stored; every length, dtype and shape is checked.

    Raises
    ------
    SecAggStateError
        The container is not a 1-D ``uint8`` array or is malformed.
    """
    if not isinstance(blob, np.ndarray) or blob.dtype != _U8 or blob.ndim != 1:
        raise SecAggStateError("device state: a packed round must be a 1-D uint8 array")
    data = blob.tobytes()
    size = int.from_bytes(data[:_HEADER_BYTES], "big")
    if len(data) < _HEADER_BYTES + size:
        raise SecAggStateError("device state: a packed round is shorter than its header")
    try:
        entries = json.loads(data[_HEADER_BYTES : _HEADER_BYTES + size])
    except (UnicodeDecodeError, ValueError):
        entries = None
    if not isinstance(entries, list):
        raise SecAggStateError("device state: a packed round has an unreadable header")
    out, offset = {}, _HEADER_BYTES + size
    for entry in entries:
        name, dtype, shape = _entry(entry)
        count = math.prod(shape)
        end = offset + count * dtype.itemsize
        if end > len(data):
            raise SecAggStateError(f"device state: packed array {name!r} runs past the end")
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
        offset = end
    if offset != len(data):
        raise SecAggStateError("device state: a packed round has trailing bytes")
    return out


def _entry(entry: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    if isinstance(entry, list) and len(entry) == 3:
        name, dtype, shape = entry
        if (isinstance(name, str) and isinstance(dtype, str) and dtype in _PACKED_DTYPES and isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 32 for d in shape)):
            return name, _PACKED_DTYPES[dtype], tuple(shape)
    raise SecAggStateError("device state: a packed round has a malformed entry")


def live_rounds(state: Mapping[str, np.ndarray]) -> list[int]:
    """Ids of the rounds with a snapshot stored in ``state``, ascending."""
    return sorted({r for key in state if (r := _round_of_key(key)) is not None})


def load_round(state: Mapping[str, np.ndarray], round_id: int) -> dict[str, np.ndarray]:
    """One round's snapshot under its plain ``secagg.*`` keys, as :func:`decode` reads them (``{}`` if none).

    Raises
    ------
    SecAggStateError
        The stored container is malformed.
    """
    key = round_key(round_id)
    return unpack(state[key]) if key in state else {}


def store_round(state: DeviceState, round_id: int, snapshot: Mapping[str, np.ndarray]) -> None:
    """Store ``snapshot`` (:func:`encode`'s plain keys) as round ``round_id``'s, replacing it.

    ``secagg.last_round`` in the snapshot is skipped: it is device-wide, and an
    older round saved after a newer one began must not move it back.
    """
    for key in snapshot:
        if not key.startswith(PREFIX):
            raise SecAggStateError(f"device state: snapshot key {key!r} lacks the {PREFIX!r} prefix")
    state[round_key(round_id)] = pack({k: v for k, v in snapshot.items() if k != K_LAST_ROUND})


def drop_round(state: DeviceState, round_id: int) -> None:
    """Remove one round's snapshot (secrets, shares, setup, stage); other rounds stay."""
    state.pop(round_key(round_id), None)


def clear_state(state: DeviceState, *, forget_round: bool = False) -> None:
    """Remove every ``secagg.*`` key of every round: secrets, shares, setup, stage.

    ``secagg.last_round`` (a round id, not a secret) stays unless
    ``forget_round``, so messages of that round or older ones are refused later.
    """
    for key in [k for k in state if k.startswith(PREFIX)]:
        if key != K_LAST_ROUND or forget_round:
            del state[key]


def last_round(state: Mapping[str, np.ndarray]) -> int | None:
    """Id of the latest round this device began, or ``None``."""
    return _get_int(state, K_LAST_ROUND) if K_LAST_ROUND in state else None


def stored_round(state: Mapping[str, np.ndarray]) -> int | None:
    """Id of the newest round with a snapshot in ``state``, or ``None`` when none is in progress."""
    rounds = live_rounds(state)
    return rounds[-1] if rounds else None


def stored_stage(state: Mapping[str, np.ndarray], round_id: int | None = None) -> str | None:
    """Stage of round ``round_id``'s client (default: the newest round), or ``None`` when none is stored."""
    if round_id is None:
        round_id = stored_round(state)
    snapshot = {} if round_id is None else load_round(state, round_id)
    if K_NODE not in snapshot:
        return None
    code = _get_int(snapshot, K_STAGE, _U8)
    if code >= len(STAGES):
        raise SecAggStateError(f"device state: unknown stage code {code}")
    return STAGES[code]
