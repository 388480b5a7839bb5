"""Datasets by name under an evaluation protocol: the one entry point for apps and CLIs.

Protocols
---------
``E1`` (explicit rating prediction, scored by RMSE/MAE): ML-100K uses its
official fold ``u{fold}.base``/``u{fold}.test``; every other dataset a
per-user random 5-fold split, fold ``fold``.

``R1`` (top-N ranking): every interaction becomes implicit (rating 1.0) and
each user's latest interaction is the test item (leave-last-out); ML-100K uses
all of ``u.data``. Leave-last-out needs timestamps: a CSV without them is
refused with the keys to pass, never split by file order.

A :class:`~fedrec.data.options.SplitSpec` other than ``protocol`` replaces the
protocol's split (seeded random hold-outs, leave-last-out, the user's own
train and test files); the protocol still decides what is scored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from fedrec.data.interactions import Dataset, Interactions
from fedrec.data.mapped import MappedDataset
from fedrec.data.movielens import MOVIELENS_NAMES, load_ml100k, load_ml100k_fold, load_movielens
from fedrec.data.options import NONE, CsvOptions, SplitSpec
from fedrec.data.splits import leave_last_out, random_holdout, random_kfold
from fedrec.data.synthetic import SyntheticConfig, generate, synthetic_dataset
from fedrec.data.userfile import UserFile, read_user_file, train_test_files
from fedrec.errors import ConfigError, DataError

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
    csv: CsvOptions | None = None,
    split: SplitSpec | None = None,
) -> Dataset:
    """Load dataset ``name`` split under ``protocol``.

    Parameters
    ----------
    name:
        One of :data:`DATASET_NAMES`.
    data_dir:
        MovieLens root (containing e.g. ``ml-100k/``) or the dataset folder;
        defaults to ``$FEDREC_DATA_DIR``. Not needed for ``"synthetic"``. For
        ``"csv"``: the file, or a folder holding exactly one data file.
    protocol:
        ``"E1"`` rating prediction or ``"R1"`` ranking (see module docs).
    fold:
        E1 fold, 1..5 (ML-100K also ``"a"``/``"b"``); ``split="protocol"`` only.
    synthetic:
        Generator parameters for ``"synthetic"`` (default :class:`SyntheticConfig`).
    seed:
        Seed of the random k-fold split (E1 on datasets without official folds).
    path, user_col, item_col, rating_col, timestamp_col, delimiter:
        For ``"csv"`` when ``csv`` is not given: a headed file with these
        column names (see :func:`~fedrec.data.csvfile.load_csv`). ``path``
        defaults to ``data_dir``.
    rating_scale:
        For ``"csv"``: ``(low, high)``; without it the E1 scale is the observed range.
    csv:
        For ``"csv"``: how to read the file (run-config keys ``csv.*``).
    split:
        How to make train and test (run-config keys ``split*``); default the protocol's.
    """
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    split = split or SplitSpec()
    if split.kind == "files" and name != "csv":
        raise ConfigError(f"split: 'files' reads your own train and test files; dataset is {name!r}, "
                          "pass --set dataset=csv")
    if name == "synthetic":
        return _synthetic(synthetic or SyntheticConfig(), protocol, fold, split)
    if name == "csv":
        options = csv or CsvOptions(header=True, sep=delimiter, user_col=user_col, item_col=item_col,
                                    rating_col=rating_col or NONE, timestamp_col=timestamp_col or NONE)
        source = path if path is not None else data_dir
        return _csv_dataset(source, options, protocol, split, fold=fold, seed=seed, rating_scale=rating_scale)
    root = _data_root(name, data_dir)
    if name == "ml-100k" and protocol == "E1" and split.kind == "protocol":
        return load_ml100k_fold(root, fold)
    inter = load_ml100k(root) if name == "ml-100k" else load_movielens(name, root)
    scale = _ML_SCALES.get(name, (0.5, 5.0))
    train, test = _split(inter, protocol, split, fold=fold, seed=seed, source=name)
    return _finish(name, train, test, protocol, scale)


def _synthetic(config: SyntheticConfig, protocol: str, fold: int | str, split: SplitSpec) -> Dataset:
    if split.kind == "protocol":
        return synthetic_dataset(config, protocol, fold=_numeric_fold(fold), k=N_FOLDS)  # type: ignore[arg-type]  # E1 or R1, checked by load_dataset
    if protocol == "E1" and config.implicit:
        raise ConfigError("protocol E1 predicts ratings; the synthetic config is implicit "
                          "(set synthetic.implicit=false or use protocol R1)")
    train, test = _split(generate(config), protocol, split, fold=fold, seed=config.seed, source="synthetic")
    return _finish("synthetic", train, test, protocol, (1.0, 5.0))


def _csv_dataset(source: str | Path | None, options: CsvOptions, protocol: str, split: SplitSpec, *,
                 fold: int | str, seed: int, rating_scale: tuple[float, float] | None) -> Dataset:
    if source is None or str(source) == "":
        raise ConfigError("dataset 'csv' needs a file: pass --data-dir <file or folder> "
                          "(data-dir key; path= in Python)")
    if rating_scale is not None and not rating_scale[0] < rating_scale[1]:
        raise DataError(f"{source}: rating_scale {rating_scale} must be (low, high) with low < high")
    train_path, test_path = _csv_paths(Path(source), split)
    main = read_user_file(train_path, options, rating_scale=rating_scale)
    if protocol == "E1" and "rating" not in main.used:
        raise ConfigError(f"{main.path}: protocol E1 predicts ratings, but no rating column is read "
                          f"(columns: {main.describe_columns()}); pass --set csv.rating-col=<name or 0-based "
                          "index> (rating_col= in Python), or --protocol R1 for implicit feedback")
    if test_path is not None:
        other = read_user_file(test_path, options, rating_scale=rating_scale)
        train, test = main.inter, _onto(other, main)
    else:
        train, test = _split(main.inter, protocol, split, fold=fold, seed=seed, source=str(main.path),
                             timestamps=main.has_timestamps, columns=main.describe_columns())
    inter = main.inter
    scale = rating_scale or (float(min(inter.ratings.min(), test.ratings.min(initial=np.inf))),
                             float(max(inter.ratings.max(), test.ratings.max(initial=-np.inf))))
    return _finish("csv", train, test, protocol, scale)


def _csv_paths(source: Path, split: SplitSpec) -> tuple[Path, Path | None]:
    """Training file (or the one file to split) and the test file of ``split=files``."""
    if split.kind != "files":
        return source, None
    if split.test_file:
        return source, Path(split.test_file)
    pair = train_test_files(source) if source.is_dir() else None
    if pair is None:
        raise ConfigError(f"split=files needs the test file: pass --set split.test-file=<file> (data-dir "
                          f"{source} is the training file), or a data-dir folder holding train.* and test.*")
    return pair


def _onto(test: UserFile, train: UserFile) -> Interactions:
    """``test``'s rows re-indexed into ``train``'s id maps; rows naming an unseen user or item are dropped."""
    users = np.array([train.inter.user_ids._index.get(u, -1) for u in test.inter.user_ids.ids], np.int64)
    items = np.array([train.inter.item_ids._index.get(i, -1) for i in test.inter.item_ids.ids], np.int64)
    u, i = users[test.inter.users], items[test.inter.items]
    keep = (u >= 0) & (i >= 0)
    if not keep.any():
        raise DataError(f"{test.path}: split.test-file: no row names a user and an item of the training "
                        f"file {train.path}; are the columns the same (csv.user-col, csv.item-col)?")
    if not keep.all():
        logger.warning("%s: %d of %d test rows name a user or item absent from %s; they are dropped",
                       test.path, int((~keep).sum()), len(keep), train.path)
    t = test.inter
    return Interactions(u[keep], i[keep], t.ratings[keep], t.timestamps[keep], train.inter.n_users,
                        train.inter.n_items, train.inter.user_ids, train.inter.item_ids, t.weights[keep])


def _split(inter: Interactions, protocol: str, split: SplitSpec, *, fold: int | str, seed: int, source: str,
           timestamps: bool = True, columns: str = "") -> tuple[Interactions, Interactions]:
    """Train and test of ``inter`` under ``split`` (``protocol``: E1 k-fold, R1 leave-last-out)."""
    kind = split.kind
    if kind == "protocol" and protocol == "E1":
        return random_kfold(inter, k=N_FOLDS, fold=_numeric_fold(fold), seed=seed)
    if kind in ("protocol", "leave-last") and not timestamps:
        what = "protocol R1 holds out each user's latest interaction" if kind == "protocol" else \
            "split=leave-last holds out each user's latest interaction"
        raise ConfigError(f"{source}: {what}, but the file has no timestamps (columns: {columns}); pass "
                          "--set split=random-one for a seeded random hold-out (with R1 also "
                          "model.recency-boost=0), or csv.timestamp-col=<name or 0-based index>")
    if kind in ("protocol", "leave-last"):
        return leave_last_out(inter)
    if kind == "random-one":
        return random_holdout(inter, n_test=1, seed=split.seed)
    return random_holdout(inter, fraction=split.fraction, seed=split.seed)


def _finish(name: str, train: Interactions, test: Interactions, protocol: str,
            scale: tuple[float, float]) -> Dataset:
    if protocol == "E1":
        return Dataset(name, train, test, rating_scale=scale)
    return Dataset(name, train.with_ratings(np.ones(len(train), np.float32)),
                   test.with_ratings(np.ones(len(test), np.float32)), rating_scale=None)


def _numeric_fold(fold: int | str) -> int:
    """Folds ``a``/``b`` exist only for ML-100K; elsewhere a fold is 1..5."""
    if isinstance(fold, str) and fold.isdigit():
        fold = int(fold)
    if not isinstance(fold, int) or isinstance(fold, bool) or not 1 <= fold <= N_FOLDS:
        raise ConfigError(f"fold {fold!r} invalid; valid folds: 1..{N_FOLDS}")
    return fold


def _data_root(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        raise ConfigError(
            f"dataset {name!r} needs its files: pass --data-dir or set {DATA_DIR_ENV} "
            f"to the folder containing {name}/"
        )
    return Path(data_dir)


def check_recency(data: Dataset | MappedDataset, *, recency_boost: float) -> None:
    """Refuse recency weighting on training data whose timestamps are all equal.

    Why: with no order in time the "latest" interactions are an artefact of
    the item index, so the weights would favour arbitrary items.
    """
    stamps = data.train.timestamps
    if recency_boost > 0 and len(stamps) and int(stamps.min()) == int(stamps.max()):
        raise ConfigError(f"model.recency-boost={recency_boost:g} weighs each user's latest interactions, but "
                          f"the {data.name} training data has no timestamps (all equal); pass --set "
                          "model.recency-boost=0, or csv.timestamp-col=<name or 0-based index>")
