"""Which data a run uses, and the process-wide copy of it that simulated devices share.

A run names its data with a :class:`DataSpec` (``dataset``, ``data-dir``,
``protocol``, ``fold``, ``users-per-client``, ``synthetic.*``, ``csv.*``, ``split*``);
:func:`load_run_dataset` loads it once per process. Only the simulation's
source provider and the server's catalogue facts read it: a device sees its
rows through its :class:`~fedrec.data.partition.InteractionSource` only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec import flatconfig as fc
from fedrec.data.interactions import Dataset
from fedrec.data.options import CsvOptions, SplitSpec, data_options
from fedrec.data.synthetic import SyntheticConfig
from fedrec.errors import ConfigError

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

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> DataSpec:
        """The data keys of a resolved flat configuration: dataset, fold, ``synthetic.*``, ``csv.*``, ``split*``.

        R1's synthetic data is implicit feedback unless ``synthetic.implicit`` says otherwise.
        """
        dataset = fc.choice(flat, "dataset", DATASETS)
        synthetic: dict[str, Any] = {k[len(SYNTHETIC_PREFIX):].replace("-", "_"): v for k, v in flat.items()
                                     if k.startswith(SYNTHETIC_PREFIX)}
        if flat["protocol"] == "R1":
            synthetic.setdefault("implicit", True)
        try:
            syn = SyntheticConfig(**synthetic)
        except TypeError as exc:
            raise ConfigError(f"synthetic.*: {exc}") from exc
        csv_options, split = data_options(flat)
        return cls(dataset, fc.get(flat, "data-dir", str), fc.get(flat, "protocol", str),
                   fc.integer(flat, "fold", low=1), fc.integer(flat, "users-per-client", low=1), syn, csv_options,
                   split)


DATASETS = ("synthetic", "ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest", "ml-latest-small", "csv")
SYNTHETIC_PREFIX = "synthetic."
"""Prefix of the open key family that sets :class:`~fedrec.data.synthetic.SyntheticConfig` fields."""


def synthetic_key_known(key: str) -> bool:
    """Whether ``key`` is ``synthetic.<field>`` of a :class:`~fedrec.data.synthetic.SyntheticConfig` field."""
    if not key.startswith(SYNTHETIC_PREFIX):
        return False
    return key[len(SYNTHETIC_PREFIX):].replace("-", "_") in {f.name for f in fields(SyntheticConfig)}


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
        spec.dataset, data_dir=spec.data_dir or None, protocol=spec.protocol,  # type: ignore[arg-type]  # E1 or R1, checked by runconfig
        fold=spec.fold, synthetic=spec.synthetic, csv=spec.csv, split=spec.split))
    return _MAPPED_CACHE[spec]
