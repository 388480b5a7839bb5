"""Datasets by name under an evaluation protocol: the one entry point for apps and CLIs.

Protocols
---------
``E1`` (explicit rating prediction, scored by RMSE/MAE): ML-100K uses its
official fold ``u{fold}.base``/``u{fold}.test``; every other dataset a
per-user random 5-fold split, fold ``fold``.

``R1`` (top-N ranking): every interaction becomes implicit (rating 1.0) and
each user's latest interaction is the test item (leave-last-out); ML-100K uses
all of ``u.data``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from fedrec.data.csvfile import load_csv
from fedrec.data.interactions import Dataset, Interactions
from fedrec.data.movielens import MOVIELENS_NAMES, load_ml100k, load_ml100k_fold, load_movielens
from fedrec.data.splits import leave_last_out, random_kfold
from fedrec.data.synthetic import SyntheticConfig, synthetic_dataset
from fedrec.errors import ConfigError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "FEDREC_DATA_DIR"
"""Environment variable naming the data root when ``data_dir`` is not given."""

DATASET_NAMES: tuple[str, ...] = ("synthetic", *MOVIELENS_NAMES, "csv")
PROTOCOLS: tuple[str, ...] = ("E1", "R1")
N_FOLDS = 5

_ML_SCALES = {"ml-100k": (1.0, 5.0), "ml-1m": (1.0, 5.0)}


def load_dataset(
    name: str = "synthetic",
    *,
    data_dir: str | Path | None = None,
    protocol: Literal["E1", "R1"] = "E1",
    fold: int | str = 1,
    synthetic: SyntheticConfig | None = None,
    seed: int = 0,
    path: str | Path | None = None,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    delimiter: str | None = None,
    rating_scale: tuple[float, float] | None = None,
) -> Dataset:
    """Load dataset ``name`` split under ``protocol``.

    Parameters
    ----------
    name:
        One of :data:`DATASET_NAMES`.
    data_dir:
        MovieLens root (containing e.g. ``ml-100k/``) or the dataset folder;
        defaults to ``$FEDREC_DATA_DIR``. Not needed for ``"synthetic"``.
    protocol:
        ``"E1"`` rating prediction or ``"R1"`` ranking (see module docs).
    fold:
        E1 fold, 1..5 (ML-100K also ``"a"``/``"b"``).
    synthetic:
        Generator parameters for ``"synthetic"`` (default :class:`SyntheticConfig`).
    seed:
        Seed of the random k-fold split (E1 on datasets without official folds).
    path, user_col, item_col, rating_col, timestamp_col, delimiter, rating_scale:
        For ``"csv"``: see :func:`~fedrec.data.csvfile.load_csv`. ``path``
        defaults to ``data_dir``. Without ``rating_scale`` the E1 scale is the
        observed rating range.
    """
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if name == "synthetic":
        return synthetic_dataset(synthetic, protocol, fold=_numeric_fold(fold), k=N_FOLDS)
    if name == "csv":
        inter = _load_csv(
            path if path is not None else data_dir,
            user_col=user_col,
            item_col=item_col,
            rating_col=rating_col,
            timestamp_col=timestamp_col,
            delimiter=delimiter,
            rating_scale=rating_scale,
            protocol=protocol,
        )
        scale = rating_scale or (float(inter.ratings.min()), float(inter.ratings.max()))
        return _protocol_split("csv", inter, protocol, fold, seed, scale)
    root = _data_root(name, data_dir)
    if name == "ml-100k" and protocol == "E1":
        return load_ml100k_fold(root, fold)
    inter = load_ml100k(root) if name == "ml-100k" else load_movielens(name, root)
    return _protocol_split(name, inter, protocol, fold, seed, _ML_SCALES.get(name, (0.5, 5.0)))


def _protocol_split(
    name: str,
    inter: Interactions,
    protocol: str,
    fold: int | str,
    seed: int,
    scale: tuple[float, float],
) -> Dataset:
    if protocol == "E1":
        train, test = random_kfold(inter, k=N_FOLDS, fold=_numeric_fold(fold), seed=seed)
        return Dataset(name, train, test, rating_scale=scale)
    train, test = leave_last_out(inter.with_ratings(np.ones(len(inter), np.float32)))
    return Dataset(name, train, test, rating_scale=None)


def _numeric_fold(fold: int | str) -> int:
    """Folds ``a``/``b`` exist only for ML-100K; elsewhere a fold is 1..5."""
    if isinstance(fold, str) and fold.isdigit():
        fold = int(fold)
    if not isinstance(fold, int) or isinstance(fold, bool) or not 1 <= fold <= N_FOLDS:
        raise ConfigError(f"fold {fold!r} invalid; valid folds: 1..{N_FOLDS}")
    return fold


def _data_root(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        raise ConfigError(
            f"dataset {name!r} needs its files: pass --data-dir or set {DATA_DIR_ENV} "
            f"to the folder containing {name}/"
        )
    return Path(data_dir)


def _load_csv(
    path: str | Path | None,
    *,
    protocol: str,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str | None,
    delimiter: str | None,
    rating_scale: tuple[float, float] | None,
) -> Interactions:
    if path is None:
        raise ConfigError(
            "dataset 'csv' needs a file: pass path= (or --data-dir pointing at the file)"
        )
    if protocol == "E1" and rating_col is None:
        raise ConfigError(
            "protocol E1 predicts ratings: pass rating_col for dataset 'csv', or use R1"
        )
    return load_csv(
        path,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        timestamp_col=timestamp_col,
        delimiter=delimiter,
        rating_scale=rating_scale,
    )
