"""Message keys and payload layout: the contract between server and devices.

``server/`` and ``client/`` never import each other; both import the names
here. Payloads are described with plain dicts of numpy arrays and scalars, so
this module (and everything it describes) stays free of Flower; the adapters
copy them into Flower records.

Downlink (server -> device), every device receives the same full table:
    ``RECORD_GLOBAL``  arrays ``item_factors`` (n_items x d), ``item_bias`` (n_items), in
                       ``float32``, ``float16`` or bfloat16 carried as ``uint16``
                       (``downlink.dtype``; :func:`encode_downlink`)
    ``RECORD_CONFIG``  the round's facts only: ``round``, ``global-mean``, ``run-digest`` (of the
                       run configuration) and, once the server has resolved it from the
                       population, ``min-survivors``; an evaluation downlink of rating data
                       adds the public rating scale (``rating-min``, ``rating-max``), so no
                       device loads data to learn it. The run configuration itself reaches
                       devices through Flower's ``Context.run_config``, once per run, not here
Uplink (device -> server), plain aggregation:
    ``RECORD_UPDATE``  dense ``item_factors``, ``item_bias``, ``counts`` deltas
    ``RECORD_METRICS`` ``ok`` only (no epsilon, no budget flag: rating-level
    epsilon is a public function of the rounds a device took part in)
Secure aggregation, both ways: one ``MSG_SECAGG`` message per device and
trip carries one *part* per protocol stage it holds (``SECAGG_SETUP`` ...
``SECAGG_UNMASK``; at most one part per stage, and with pipelined rounds two
parts of two consecutive rounds). A part's payload travels as scalars and
lists in the ConfigRecord ``secagg_record(stage)`` and arrays in the
ArrayRecord ``secagg_arrays_record(stage)``; a part the device refused comes
back as ``secagg_error_record(stage)`` holding ``SECAGG_REASON``. The uplink
update is the same three segments, quantized and masked in one array; a
downlink with a mask part adds ``RECORD_GLOBAL`` and ``RECORD_CONFIG``, and
its uplink may add ``RECORD_METRICS``.
Evaluation uplink: ``RECORD_METRICS`` with ``<metric>.sum`` / ``<metric>.count`` only.
Under secure aggregation evaluation is a ``MSG_SECAGG_EVAL`` round with the same
parts as ``MSG_SECAGG`` (its mask message carries the table and configuration),
whose masked vector holds the metric sums and counts
(:mod:`fedrec.metrics.secure_sum`); the reply holds no metric at all, and the
device refuses plain ``MSG_TRAIN`` and ``MSG_EVALUATE`` messages.

User factors, user biases, ratings and item-id lists have no key here: there is
no way to put them in a message through this contract.
"""

from __future__ import annotations

import math

import numpy as np

from fedrec.errors import PayloadError

# Message types (Flower's "<category>.<action>" form).
MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"
MSG_SECAGG = "train.secagg"
MSG_SECAGG_EVAL = "evaluate.secagg"  # an evaluation round through the secure sum (same parts as MSG_SECAGG)

# Secure-aggregation stages: the parts a MSG_SECAGG message may carry, in protocol order.
SECAGG_SETUP = "setup"
SECAGG_SHARE = "share"
SECAGG_MASK = "mask"
SECAGG_UNMASK = "unmask"
SECAGG_STAGES = (SECAGG_SETUP, SECAGG_SHARE, SECAGG_MASK, SECAGG_UNMASK)

# Record names inside a message's RecordDict.
RECORD_GLOBAL = "fedrec.global"
RECORD_CONFIG = "fedrec.config"
RECORD_UPDATE = "fedrec.update"
RECORD_METRICS = "fedrec.metrics"
RECORD_SECAGG = "fedrec.secagg"  # prefix of the per-part records below
SECAGG_REASON = "reason"  # the key of a part's error record

# Device state (Context.state in simulation, the device store in deployment).
STATE_LOCAL = "fedrec.local"
STATE_PRIVACY = "fedrec.privacy"
STATE_SECAGG = "fedrec.secagg"
STATE_STREAM = "fedrec.stream"  # the device's training-randomness stream offset
STATE_EVAL_SECAGG = "fedrec.eval.secagg"  # the secure evaluation rounds' own protocol state
STATE_RESTORED = "fedrec.restored"  # marks a simulated device whose persisted state was read back

# SuperNode node config of a deployed device (client SDK: Device.join)
NODE_STORE = "store"  # path of the device's encrypted store
NODE_KEY_FILE = "key-file"  # file holding the store key (hex), readable by the app user only
NODE_IDENTITY = "secagg-identity"  # folder of the device's secure-aggregation identity (identity.pem, ...)
NODE_EVAL_MIN_COHORT = "secagg-eval-min-cohort"  # the device's own floor for a secure evaluation's threshold
# Set by Flower's simulation engine (never by 'fedrec device join'): together they mark a simulated device.
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"

# Array names.
ARRAY_ITEM_FACTORS = "item_factors"
ARRAY_ITEM_BIAS = "item_bias"
ARRAY_COUNTS = "counts"
UPDATE_SEGMENTS = (ARRAY_ITEM_FACTORS, ARRAY_ITEM_BIAS, ARRAY_COUNTS)
# Extra summed segments of a model.loss = "wrmf" update: p p^T (dim*dim, flattened) and,
# per touched item, the curvature trace (c - m_i) |p|^2 (n_items). The plain Flower uplink
# (server/loop.py) and the secure-aggregation layout (fedrec.secagg.wrmf_segments) carry them.
ARRAY_USER_GRAM = "user_gram"
ARRAY_ITEM_CURVATURE = "item_curvature"
WRMF_SEGMENTS = (ARRAY_USER_GRAM, ARRAY_ITEM_CURVATURE)


def wrmf_segment_lengths(n_items: int, dim: int) -> dict[str, int]:
    """Length of each :data:`WRMF_SEGMENTS` segment, in wire order: ``dim * dim``, then ``n_items``."""
    return {ARRAY_USER_GRAM: dim * dim, ARRAY_ITEM_CURVATURE: n_items}

# Config keys (downlink).
CFG_ROUND = "round"
CFG_GLOBAL_MEAN = "global-mean"
CFG_RATING_MIN = "rating-min"  # evaluation downlinks of rating data: the public rating scale
CFG_RATING_MAX = "rating-max"
CFG_RUN_DIGEST = "run-digest"  # RunConfig.digest of the server's configuration: a device refuses another
CFG_MIN_SURVIVORS = "min-survivors"  # t_min of distributed noise, resolved by the server from the population

# Metric keys (uplink).
MET_OK = "ok"
MET_SUM_SUFFIX = ".sum"
MET_COUNT_SUFFIX = ".count"


def secagg_record(stage: str) -> str:
    """ConfigRecord name of a secure-aggregation part (scalars and lists)."""
    return f"{RECORD_SECAGG}.{stage}"


def secagg_arrays_record(stage: str) -> str:
    """ArrayRecord name of a secure-aggregation part (its numpy arrays, e.g. the masked vector)."""
    return f"{RECORD_SECAGG}.{stage}.arrays"


def secagg_error_record(stage: str) -> str:
    """ConfigRecord name of a part the device refused: ``SECAGG_REASON`` says why."""
    return f"{RECORD_SECAGG}.{stage}.error"


DOWNLINK_DTYPES = ("float32", "float16", "bfloat16")
"""Precisions of the downlink table. It is public (every device receives the same one), so a coarser
copy reveals nothing the exact one does not; it halves the bytes the server sends."""


def encode_downlink(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` (float32) in the downlink precision; bfloat16 as the top 16 bits, rounded to nearest even."""
    array = np.ascontiguousarray(array, np.float32)
    if dtype == "float32":
        return array
    if dtype == "float16":
        return array.astype(np.float16)
    if dtype == "bfloat16":
        bits = array.view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return (rounded >> np.uint32(16)).astype(np.uint16)
    raise ValueError(f"downlink.dtype: {dtype!r} is not one of {DOWNLINK_DTYPES}")


def decode_downlink(array: np.ndarray) -> np.ndarray:
    """A downlink array back to float32; the encoding is told by the array's own dtype."""
    if array.dtype == np.uint16:
        return (array.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.asarray(array, np.float32)


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
_NPY_HEADERS_MAX = 256


def npy_array(data: bytes) -> np.ndarray:
    """The array in a ``.npy`` buffer (what Flower's ``Array.data`` holds), as ``np.load`` reads it.

    Flower's ``Array.numpy()`` runs ``np.load``, which parses the header with
    ``ast.literal_eval`` on every call: about a third of a device's message
    handling and of the server's reply handling at 1,682 items. A run sees a
    handful of distinct headers (one per array shape and dtype), so each is
    parsed once by numpy's own ``read_array_header_*`` and remembered; the body
    is then one ``frombuffer`` (copied, so the result is writable like
    ``np.load``'s). Object dtypes (pickles) and short buffers are refused.

    Raises
    ------
    PayloadError
        When ``data`` is not a complete ``.npy`` buffer of a plain dtype.
    """
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise PayloadError("array payload: not a .npy buffer")
    major = data[6]
    if major == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start = 12 + int.from_bytes(data[8:12], "little")
    else:
        raise PayloadError(f"array payload: unknown .npy format version {major}")
    header = bytes(data[:start])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        parsed = _parse_npy_header(header, major)
        if len(_NPY_HEADERS) >= _NPY_HEADERS_MAX:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[header] = parsed
    dtype, shape, fortran = parsed
    count = math.prod(shape)
    if len(data) - start < count * dtype.itemsize:
        raise PayloadError(f"array payload: {len(data) - start} bytes for {count} values of {dtype}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


def _parse_npy_header(header: bytes, major: int) -> tuple[np.dtype, tuple[int, ...], bool]:
    import io

    from numpy.lib import format as npy

    stream = io.BytesIO(header)
    stream.seek(8)
    try:
        reader = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
    except ValueError as exc:
        raise PayloadError(f"array payload: bad .npy header: {exc}") from exc
    if dtype.hasobject:
        raise PayloadError("array payload: object arrays are refused")
    return dtype, tuple(int(s) for s in shape), bool(fortran)
