"""Message keys and payload layout: the contract between server and devices.

``server/`` and ``client/`` never import each other; both import the names
here. Payloads are described with plain dicts of numpy arrays and scalars, so
this module (and everything it describes) stays free of Flower; the adapters
copy them into Flower records.

Downlink (server -> device), every device receives the same full table:
    ``RECORD_GLOBAL``  arrays ``item_factors`` (n_items x d), ``item_bias`` (n_items)
    ``RECORD_CONFIG``  ``round``, ``global-mean`` and the round's settings
Uplink (device -> server), plain aggregation:
    ``RECORD_UPDATE``  dense ``item_factors``, ``item_bias``, ``counts`` deltas
    ``RECORD_METRICS`` ``ok`` and, under rating-level DP, ``epsilon``/``budget-exhausted``
Secure aggregation, both ways: each stage's protocol payload, scalars and
lists in the ConfigRecord ``RECORD_SECAGG``, arrays in the ArrayRecord
``RECORD_SECAGG_ARRAYS``. The uplink update is the same three segments,
quantized and masked in one array; the mask stage's downlink adds
``RECORD_GLOBAL`` and ``RECORD_CONFIG``, its uplink may add ``RECORD_METRICS``.
Evaluation uplink: ``RECORD_METRICS`` with ``<metric>.sum`` / ``<metric>.count`` only.

User factors, user biases, ratings and item-id lists have no key here: there is
no way to put them in a message through this contract.
"""

from __future__ import annotations

# Message types (Flower's "<category>.<action>" form).
MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"
MSG_SECAGG_SETUP = "train.secagg_setup"
MSG_SECAGG_SHARE = "train.secagg_share"
MSG_SECAGG_MASK = "train.secagg_mask"
MSG_SECAGG_UNMASK = "train.secagg_unmask"

# Record names inside a message's RecordDict.
RECORD_GLOBAL = "fedrec.global"
RECORD_CONFIG = "fedrec.config"
RECORD_UPDATE = "fedrec.update"
RECORD_METRICS = "fedrec.metrics"
RECORD_SECAGG = "fedrec.secagg"
RECORD_SECAGG_ARRAYS = "fedrec.secagg.arrays"

# Device state (Context.state in simulation, the device store in deployment).
STATE_LOCAL = "fedrec.local"
STATE_PRIVACY = "fedrec.privacy"
STATE_SECAGG = "fedrec.secagg"

# Array names.
ARRAY_ITEM_FACTORS = "item_factors"
ARRAY_ITEM_BIAS = "item_bias"
ARRAY_COUNTS = "counts"
UPDATE_SEGMENTS = (ARRAY_ITEM_FACTORS, ARRAY_ITEM_BIAS, ARRAY_COUNTS)

# Config keys (downlink).
CFG_ROUND = "round"
CFG_GLOBAL_MEAN = "global-mean"
CFG_RUN = "run."  # prefix: the flat run configuration, forwarded to devices

# Metric keys (uplink).
MET_OK = "ok"
MET_EPSILON = "epsilon"
MET_BUDGET_EXHAUSTED = "budget-exhausted"
MET_SUM_SUFFIX = ".sum"
MET_COUNT_SUFFIX = ".count"
