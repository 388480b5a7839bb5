"""Shared fixtures: tiny synthetic datasets and the optional real ML-100K path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.interactions import Dataset, Interactions
from fedrec.data.synthetic import SyntheticConfig, synthetic_dataset


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """``$FEDREC_DATA_DIR`` containing ``ml-100k/``; the test is skipped when absent."""
    root = os.environ.get("FEDREC_DATA_DIR")
    if not root or not (Path(root) / "ml-100k" / "u.data").exists():
        pytest.skip("MovieLens-100K not available: set FEDREC_DATA_DIR to a folder containing ml-100k/")
    return Path(root)


@pytest.fixture(scope="session")
def small_explicit() -> Dataset:
    return synthetic_dataset(SyntheticConfig(n_users=150, n_items=60, mean_interactions=20, seed=3), "E1")


@pytest.fixture(scope="session")
def small_implicit() -> Dataset:
    return synthetic_dataset(SyntheticConfig(n_users=150, n_items=60, mean_interactions=20, seed=3,
                                             implicit=True), "R1")


def tiny(users: list[int], items: list[int], ratings: list[float] | None = None, *, n_users: int | None = None,
         n_items: int | None = None) -> Interactions:
    return Interactions.build(np.array(users), np.array(items), None if ratings is None else np.array(ratings),
                              n_users=n_users, n_items=n_items)
