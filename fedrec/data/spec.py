"""Which data a run uses, and the process-wide copy of it that simulated devices share.

A run names its data with a :class:`DataSpec` (``dataset``, ``data-dir``,
``protocol``, ``fold``, ``users-per-client``, ``synthetic.*``);
:func:`load_run_dataset` loads it once per process. Only the simulation's
source provider and the server's catalogue facts read it: a device sees its
rows through its :class:`~fedrec.data.partition.InteractionSource` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedrec.data.interactions import Dataset
from fedrec.data.synthetic import SyntheticConfig


@dataclass(frozen=True)
class DataSpec:
    """Which data a run uses and how it is split into devices."""

    dataset: str
    data_dir: str
    protocol: str
    fold: int
    users_per_client: int
    synthetic: SyntheticConfig


_DATASET_CACHE: dict[tuple[Any, ...], Dataset] = {}


def load_run_dataset(spec: DataSpec) -> Dataset:
    """The run's :class:`~fedrec.data.interactions.Dataset`, loaded once per process.

    Simulated devices (many per worker process) share one copy; each only ever
    reads its own partition through :class:`~fedrec.data.partition.PartitionSource`.
    """
    from fedrec.data.registry import load_dataset

    key = (spec.dataset, spec.data_dir, spec.protocol, spec.fold, spec.synthetic)
    if key not in _DATASET_CACHE:
        _DATASET_CACHE.clear()
        _DATASET_CACHE[key] = load_dataset(spec.dataset, data_dir=spec.data_dir or None,
                                           protocol=spec.protocol,  # type: ignore[arg-type]  # validated in runconfig
                                           fold=spec.fold, synthetic=spec.synthetic)
    return _DATASET_CACHE[key]
