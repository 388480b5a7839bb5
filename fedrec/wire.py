"""Message keys and payload layout: the contract between server and devices.

``server/`` and ``client/`` never import each other; both import the names
here. Payloads are described with plain dicts of numpy arrays and scalars, so
this module (and everything it describes) stays free of Flower; the adapters
copy them into Flower records.

Downlink (server -> device), every device receives the same full table:
    ``RECORD_GLOBAL``  arrays ``item_factors`` (n_items x d), ``item_bias`` (n_items)
    ``RECORD_CONFIG``  ``round``, ``global-mean`` and the round's settings; an evaluation
                       downlink of rating data adds the public rating scale
                       (``rating-min``, ``rating-max``), so no device loads data to learn it
Uplink (device -> server), plain aggregation:
    ``RECORD_UPDATE``  dense ``item_factors``, ``item_bias``, ``counts`` deltas
    ``RECORD_METRICS`` ``ok`` and, under rating-level DP, ``epsilon``/``budget-exhausted``
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

User factors, user biases, ratings and item-id lists have no key here: there is
no way to put them in a message through this contract.
"""

from __future__ import annotations

# Message types (Flower's "<category>.<action>" form).
MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"
MSG_SECAGG = "train.secagg"

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

# Array names.
ARRAY_ITEM_FACTORS = "item_factors"
ARRAY_ITEM_BIAS = "item_bias"
ARRAY_COUNTS = "counts"
UPDATE_SEGMENTS = (ARRAY_ITEM_FACTORS, ARRAY_ITEM_BIAS, ARRAY_COUNTS)

# Config keys (downlink).
CFG_ROUND = "round"
CFG_GLOBAL_MEAN = "global-mean"
CFG_RATING_MIN = "rating-min"  # evaluation downlinks of rating data: the public rating scale
CFG_RATING_MAX = "rating-max"
CFG_RUN = "run."  # prefix: the flat run configuration, forwarded to devices

# Metric keys (uplink).
MET_OK = "ok"
MET_EPSILON = "epsilon"
MET_BUDGET_EXHAUSTED = "budget-exhausted"
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
