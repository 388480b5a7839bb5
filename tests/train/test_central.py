"""Centralized trainer: learns, is deterministic, rejects bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrec.data.interactions import Dataset
from fedrec.errors import ConfigError
from fedrec.metrics.evaluate import baseline_metrics, evaluate
from fedrec.model.mf import MFConfig
from fedrec.train.central import CentralConfig, train_central
from fedrec.train.cli import main as train_central_main


def test_explicit_mf_beats_global_mean_by_a_wide_margin(small_explicit: Dataset) -> None:
    model = train_central(small_explicit.train, MFConfig(dim=8, reg=0.1, bias_reg=0.1),
                          CentralConfig(epochs=30, lr=0.01))
    rmse = evaluate(small_explicit, "E1", predict=model.predict, score_block=model.score_block)["rmse"]
    assert rmse < 0.85 * baseline_metrics(small_explicit, "E1")["rmse"]


def test_implicit_mf_beats_random(small_implicit: Dataset) -> None:
    model = train_central(small_implicit.train, MFConfig(kind="implicit", dim=8, reg=0.01, negatives=8, bias_reg=0.1),
                          CentralConfig(epochs=20, lr=0.02))
    hr = evaluate(small_implicit, "R1", predict=model.predict, score_block=model.score_block)["hr@10"]
    assert hr > 2 * 10 / small_implicit.n_items


def test_same_seed_same_model(small_explicit: Dataset) -> None:
    a = train_central(small_explicit.train, MFConfig(dim=4, reg=0.1, bias_reg=0.1), CentralConfig(epochs=2, seed=7))
    b = train_central(small_explicit.train, MFConfig(dim=4, reg=0.1, bias_reg=0.1), CentralConfig(epochs=2, seed=7))
    np.testing.assert_array_equal(a.glob.item_factors, b.glob.item_factors)


@pytest.mark.parametrize("kwargs,key", [({"epochs": 0}, "train.epochs"), ({"lr": 0}, "train.lr"),
                                        ({"batch_size": 0}, "train.batch-size"), ({"lr_decay": 2}, "train.lr-decay")])
def test_trainer_config_rejects(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        CentralConfig(**kwargs)


def test_cli_json_prints_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_central_main(["--epochs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"rmse", "mae", "seconds", "baseline_rmse"} <= set(out)
    assert out["rmse"] < out["baseline_rmse"]


def test_cli_reports_bad_input_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_central_main(["--dataset", "ml-100k", "--data-dir", "/nonexistent"]) == 2
    assert "error" in capsys.readouterr().err
