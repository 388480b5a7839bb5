"""Confidence weights (``csv.weight-col``, :attr:`Interactions.weights`) reach the federated device's loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.interactions import Dataset
from fedrec.data.mapped import open_mapped, write_mapped
from fedrec.data.partition import PartitionSource
from fedrec.federated.device import device_evaluate, device_train, train_user
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams
from fedrec.train.central import CentralConfig, train_central
from fedrec.train.local import LocalConfig

SAMPLED = MFConfig(kind="implicit", dim=4, negatives=3, neg_weight=3.0, loss="logistic")
WRMF = MFConfig(kind="implicit", loss="wrmf", dim=4, reg=0.5, confidence=5.0)
LOCAL = LocalConfig(steps=3, lr=0.1, user_lr=0.1, fold_in=False)


def _weighted(data: Dataset) -> Dataset:
    """Play-count-like weights: every third training row weighs 4, the rest 1."""
    w = np.where(np.arange(len(data.train)) % 3 == 0, 4.0, 1.0)
    return Dataset(data.name, data.train.with_weights(w), data.test, data.rating_scale)


@pytest.mark.parametrize("model", [SAMPLED, WRMF, replace(SAMPLED, loss="bpr")], ids=["logistic", "wrmf", "bpr"])
def test_device_update_uses_the_rows_weights(small_implicit: Dataset, model: MFConfig) -> None:
    data = _weighted(small_implicit)
    user = int(np.flatnonzero(np.bincount(data.train.users) >= 6)[0])
    glob = GlobalParams.init(data.n_items, 4, init_std=0.3, seed=1)
    got = device_train(PartitionSource(data, np.array([user])), {}, glob, model=model, local=LOCAL, seed=0,
                       round_=1, user_offset=user).update
    rows = data.train.users == user
    rng = np.random.default_rng([0, 1, user])
    want, _ = train_user(glob, None, data.train.items[rows], data.train.ratings[rows], model=model, config=LOCAL,
                         rng=rng, timestamps=data.train.timestamps[rows],
                         weights=data.train.weights[rows].astype(np.float64))
    np.testing.assert_allclose(got.item_factors, want.item_factors, atol=1e-6)
    unweighted = device_train(PartitionSource(small_implicit, np.array([user])), {}, glob, model=model,
                              local=LOCAL, seed=0, round_=1, user_offset=user).update
    assert np.abs(got.item_factors - unweighted.item_factors).max() > 1e-3  # the weights change the step


def test_cold_start_evaluation_uses_the_weights(small_implicit: Dataset) -> None:
    """A user evaluated before training is solved with the same weighted confidences as in training."""
    data = _weighted(small_implicit)
    users = np.arange(data.n_users)
    glob = train_central(small_implicit.train, WRMF, CentralConfig(epochs=5)).glob
    weighted = device_evaluate(PartitionSource(data, users), {}, glob, model=WRMF, local=LOCAL, seed=0,
                               scale=None).flat()
    plain = device_evaluate(PartitionSource(small_implicit, users), {}, glob, model=WRMF, local=LOCAL, seed=0,
                            scale=None).flat()
    assert plain.keys() == weighted.keys() and any(v > 0 for v in plain.values())
    assert weighted != plain


def test_the_mapped_store_keeps_the_weights(small_implicit: Dataset, tmp_path: Path) -> None:
    """Flower's simulation devices read the memory-mapped store: its rows carry the same weights."""
    data = _weighted(small_implicit)
    write_mapped(data, tmp_path / "store")
    users = np.array([3, 7, 11])
    got = open_mapped(tmp_path / "store").source(users).train()
    want = PartitionSource(data, users).train()
    order_got, order_want = np.lexsort((got.items, got.users)), np.lexsort((want.items, want.users))
    assert np.array_equal(got.weights[order_got], want.weights[order_want]) and (got.weights == 4.0).any()
