"""load_dataset: names, protocols, data-dir resolution and id-map persistence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.interactions import Interactions
from fedrec.data.registry import DATASET_NAMES, load_dataset
from fedrec.data.synthetic import SyntheticConfig
from fedrec.errors import ConfigError

Writer = Callable[..., Path]
SMALL = SyntheticConfig(n_users=100, n_items=80, mean_interactions=15)


def test_synthetic_is_the_default_and_needs_no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    ds = load_dataset(synthetic=SMALL)
    assert ds.name == "synthetic" and ds.rating_scale == (1.0, 5.0) and ds.n_users == 100
    r1 = load_dataset("synthetic", protocol="R1", synthetic=SMALL)
    assert len(r1.test) == 100 and r1.rating_scale is None


def test_unknown_name_and_protocol() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("netflix")
    assert "unknown dataset 'netflix'" in str(err.value)
    assert all(name in str(err.value) for name in DATASET_NAMES)
    with pytest.raises(ConfigError, match="unknown protocol 'R9'; valid: E1, R1"):
        load_dataset(protocol="R9")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"fold 'a' invalid; valid folds: 1\.\.5"):
        load_dataset("synthetic", fold="a", synthetic=SMALL)


def test_movielens_without_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="pass --data-dir or set FEDREC_DATA_DIR"):
        load_dataset("ml-100k")


def test_ml100k_protocols_on_tiny_files(ml100k_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDREC_DATA_DIR", str(ml100k_root))
    e1 = load_dataset("ml-100k")
    assert (len(e1.train), len(e1.test)) == (2, 1) and e1.rating_scale == (1.0, 5.0)
    r1 = load_dataset("ml-100k", data_dir=ml100k_root / "ml-100k", protocol="R1")
    # user 1 (index 0) rated item 2 at ...949 and item 7 at ...950: the later one is the test item
    assert r1.test.users.tolist() == [0] and r1.test.items.tolist() == [2]
    assert np.all(r1.train.ratings == 1.0) and r1.rating_scale is None
    assert load_dataset("ml-100k", data_dir=ml100k_root, fold="a").test.items.tolist() == [0]


def test_other_releases_use_random_kfold(ml_latest_small_dir: Path) -> None:
    folds = [
        load_dataset("ml-latest-small", data_dir=ml_latest_small_dir.parent, fold=f)
        for f in range(1, 6)
    ]
    assert sum(len(d.test) for d in folds) == 3
    assert all(d.rating_scale == (0.5, 5.0) and len(d.train) + len(d.test) == 3 for d in folds)
    r1 = load_dataset("ml-latest-small", data_dir=ml_latest_small_dir, protocol="R1")
    assert r1.test.items.tolist() == [0]  # user 1: item id 1 at 964982703 is later than id 11


def test_csv_dataset(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(
        tmp_path / "log.csv",
        "u,i,r,t\n"
        + "".join(f"{u},{i},{1 + (u + i) % 5},{i}\n" for u in range(6) for i in range(8)),
    )
    ds = load_dataset(
        "csv", path=path, user_col="u", item_col="i", rating_col="r", timestamp_col="t"
    )
    assert ds.rating_scale == (1.0, 5.0) and len(ds.train) + len(ds.test) == 48
    r1 = load_dataset(
        "csv", data_dir=path, protocol="R1", user_col="u", item_col="i", timestamp_col="t"
    )
    assert r1.test.item_ids.ids[r1.test.items[0]] == "7"
    with pytest.raises(ConfigError, match="pass --set csv.rating-col"):
        load_dataset("csv", path=path, user_col="u", item_col="i")
    with pytest.raises(ConfigError, match="dataset 'csv' needs a file"):
        load_dataset("csv")


def test_save_and_reload_keeps_indices(ml100k_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("ml-100k", data_dir=ml100k_root)
    ds.train.save(tmp_path / "saved")
    back = Interactions.load(tmp_path / "saved")
    assert back.user_ids == ds.train.user_ids and back.item_ids == ds.train.item_ids
    for col in ("users", "items", "ratings", "timestamps"):
        assert np.array_equal(getattr(back, col), getattr(ds.train, col))
    assert back.item_ids.index("10") == 3


def test_real_ml100k_protocols(real_data_dir: Path) -> None:
    e1 = load_dataset("ml-100k", data_dir=real_data_dir, fold=3)
    assert (len(e1.train), len(e1.test)) == (80_000, 20_000)
    r1 = load_dataset("ml-100k", data_dir=real_data_dir, protocol="R1")
    assert len(r1.test) == 943 and len(r1.train) == 100_000 - 943
