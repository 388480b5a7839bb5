"""fedrec.data: interaction tables, loaders, synthetic data, splits and client partitions.

Everything produces or consumes :class:`Interactions` over dense indices;
:func:`load_dataset` is the entry point that returns a protocol-split
:class:`Dataset` by name.
"""

from __future__ import annotations

from fedrec.data.csvfile import load_csv
from fedrec.data.interactions import Dataset, IdMap, Interactions
from fedrec.data.movielens import (
    ML100K_GENRES,
    MOVIELENS_NAMES,
    load_ml1m,
    load_ml100k,
    load_ml100k_fold,
    load_ml100k_genres,
    load_movie_genres,
    load_movielens,
    load_movielens_csv,
    resolve_movielens_dir,
)
from fedrec.data.partition import (
    InteractionSource,
    LocalInteractions,
    PartitionSource,
    partition_users,
    partitions,
)
from fedrec.data.registry import DATA_DIR_ENV, DATASET_NAMES, PROTOCOLS, load_dataset
from fedrec.data.splits import (
    leave_last_out,
    random_holdout,
    random_kfold,
    temporal_holdout,
    validation_split,
)
from fedrec.data.synthetic import (
    ItemModel,
    SyntheticConfig,
    generate,
    iter_users,
    synthetic_dataset,
    user_factors,
    user_rows,
)

__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "ML100K_GENRES",
    "MOVIELENS_NAMES",
    "PROTOCOLS",
    "Dataset",
    "IdMap",
    "InteractionSource",
    "Interactions",
    "ItemModel",
    "LocalInteractions",
    "PartitionSource",
    "SyntheticConfig",
    "generate",
    "iter_users",
    "leave_last_out",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml100k_fold",
    "load_ml100k_genres",
    "load_ml1m",
    "load_movie_genres",
    "load_movielens",
    "load_movielens_csv",
    "partition_users",
    "partitions",
    "random_holdout",
    "random_kfold",
    "resolve_movielens_dir",
    "synthetic_dataset",
    "temporal_holdout",
    "user_factors",
    "user_rows",
    "validation_split",
]
