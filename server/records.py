"""Copying fedrec payloads into Flower records and back (server side)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedrec import wire
from fedrec.errors import FedRecError
from fedrec.federated.plan import MIN_SURVIVORS_KEY
from fedrec.model.params import GlobalParams
from fedrec.runconfig import RunConfig


def global_record(glob: GlobalParams, dtype: str = "float32") -> ArrayRecord:
    """The full item table, identical for every device of the round, in the downlink precision ``dtype``."""
    return ArrayRecord({name: Array(wire.encode_downlink(arr, dtype)) for name, arr in glob.arrays().items()})


def downlink_record(cfg: RunConfig, *, round_: int, global_mean: float,
                    rating_scale: tuple[float, float] | None = None) -> ConfigRecord:
    """The round's facts a device cannot know: round number, ``mu``, the rating scale (evaluation), ``t_min``.

    The run configuration itself reaches every device once, through Flower's
    ``Context.run_config`` (``flwr run``, or the simulation's ClientApp); only
    its digest rides here, so a device that holds another configuration refuses
    the round instead of training on different settings. ``t_min`` of
    distributed noise is sent because the server works it out from the
    population, which devices do not know. A device never loads the run's data
    to learn a public fact: the rating scale is here too.
    """
    values: dict[str, int | float | str] = {wire.CFG_ROUND: round_, wire.CFG_GLOBAL_MEAN: float(global_mean),
                                            wire.CFG_RUN_DIGEST: cfg.digest}
    if rating_scale is not None:
        values[wire.CFG_RATING_MIN], values[wire.CFG_RATING_MAX] = float(rating_scale[0]), float(rating_scale[1])
    t_min = cfg.flat.get(MIN_SURVIVORS_KEY)
    if t_min is not None:
        values[wire.CFG_MIN_SURVIVORS] = int(t_min)
    return ConfigRecord(values)  # type: ignore[arg-type]  # Flower's value union is invariant; these are its scalars


def train_content(glob_record: ArrayRecord, cfg_record: ConfigRecord) -> RecordDict:
    return RecordDict({wire.RECORD_GLOBAL: glob_record, wire.RECORD_CONFIG: cfg_record})


def update_arrays(reply: Message, n_items: int, dim: int, *, wrmf: bool = False) -> dict[str, np.ndarray]:
    """The dense update segments of a plain reply, shape-checked (a malformed reply is a dropout).

    ``wrmf``: the reply must also carry the model's two extra summed segments
    (:data:`fedrec.wire.WRMF_SEGMENTS`).
    """
    record = reply.content.array_records.get(wire.RECORD_UPDATE)
    if record is None:
        raise FedRecError(f"reply from node {reply.metadata.src_node_id}: no {wire.RECORD_UPDATE!r} record")
    expected = {wire.ARRAY_ITEM_FACTORS: (n_items, dim), wire.ARRAY_ITEM_BIAS: (n_items,),
                wire.ARRAY_COUNTS: (n_items,)}
    if wrmf:
        expected.update({name: (length,) for name, length in wire.wrmf_segment_lengths(n_items, dim).items()})
    out = {}
    for name, shape in expected.items():
        if name not in record:
            raise FedRecError(f"reply from node {reply.metadata.src_node_id}: missing array {name!r}")
        arr = wire.npy_array(record[name].data)
        if arr.shape != shape or not np.isfinite(arr).all():
            raise FedRecError(f"reply from node {reply.metadata.src_node_id}: array {name!r} has shape "
                              f"{arr.shape} (expected {shape}) or non-finite values")
        out[name] = arr
    return out


def metric_values(reply: Message) -> dict[str, float]:
    record = reply.content.metric_records.get(wire.RECORD_METRICS)
    return {k: float(v) for k, v in record.items()} if record is not None else {}  # type: ignore[arg-type]  # metric values are numbers
