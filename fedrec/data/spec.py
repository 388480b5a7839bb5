"""Which data a run uses, and the process-wide copy of it that simulated devices share.

A run names its data with a :class:`DataSpec` (``dataset``, ``data-dir``,
``protocol``, ``fold``, ``users-per-client``, ``synthetic.*``, ``csv.*``, ``split*``);
:func:`load_run_dataset` loads it once per process. Only the simulation's
source provider and the server's catalogue facts read it: a device sees its
rows through its :class:`~fedrec.data.partition.InteractionSource` only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec.data.interactions import Dataset
from fedrec.data.options import CsvOptions, SplitSpec
from fedrec.data.synthetic import SyntheticConfig

if TYPE_CHECKING:
    from fedrec.data.mapped import MappedDataset


@dataclass(frozen=True)
class DataSpec:
    """Which data a run uses and how it is split into devices."""

    dataset: str = "synthetic"
    data_dir: str = ""
    protocol: str = "E1"
    fold: int = 1
    users_per_client: int = 1
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    csv: CsvOptions = CsvOptions()
    """How ``dataset = "csv"`` is read (``csv.*`` keys)."""
    split: SplitSpec = SplitSpec()
    """How train and test are made (``split`` and ``split.*`` keys)."""


_DATASET_CACHE: dict[tuple[Any, ...], Dataset] = {}


def load_run_dataset(spec: DataSpec) -> Dataset:
    """The run's :class:`~fedrec.data.interactions.Dataset`, loaded once per process.

    Simulated devices (many per worker process) share one copy; each only ever
    reads its own partition through :class:`~fedrec.data.partition.PartitionSource`.
    """
    from fedrec.data.registry import load_dataset

    key = (spec.dataset, spec.data_dir, spec.protocol, spec.fold, spec.synthetic, spec.csv, spec.split)
    if key not in _DATASET_CACHE:
        _DATASET_CACHE.clear()
        _DATASET_CACHE[key] = load_dataset(spec.dataset, data_dir=spec.data_dir or None,
                                           protocol=spec.protocol,  # type: ignore[arg-type]  # validated in runconfig
                                           fold=spec.fold, synthetic=spec.synthetic, csv=spec.csv,
                                           split=spec.split)
    return _DATASET_CACHE[key]


_MAPPED_CACHE: dict[DataSpec, MappedDataset] = {}


def shared_run_dataset(spec: DataSpec) -> MappedDataset:
    """The run's dataset as a :class:`~fedrec.data.mapped.MappedDataset`, made once per machine.

    The first process to ask (the simulation driver) loads or generates the
    data and writes the store under ``$FEDREC_CACHE_DIR``; every later process
    (the simulation's workers, later runs with the same data) only maps it.
    Simulated devices slice their rows from it; the server reads only sizes.
    """
    if spec in _MAPPED_CACHE:
        return _MAPPED_CACHE[spec]
    from fedrec.data.mapped import mapped_dataset, source_fingerprint
    from fedrec.data.registry import DATA_DIR_ENV, load_dataset

    data_dir = spec.data_dir or os.environ.get(DATA_DIR_ENV, "")
    key: dict[str, Any] = {"dataset": spec.dataset, "protocol": spec.protocol, "fold": spec.fold,
                           "csv": asdict(spec.csv), "split": asdict(spec.split)}
    if spec.dataset == "synthetic":
        key["synthetic"] = asdict(spec.synthetic)
    else:
        key["data"] = source_fingerprint(Path(data_dir)) if data_dir else ""
    _MAPPED_CACHE.clear()
    _MAPPED_CACHE[spec] = mapped_dataset(key, lambda: load_dataset(
        spec.dataset, data_dir=spec.data_dir or None, protocol=spec.protocol,  # type: ignore[arg-type]
        fold=spec.fold, synthetic=spec.synthetic, csv=spec.csv, split=spec.split))
    return _MAPPED_CACHE[spec]
