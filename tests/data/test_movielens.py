"""MovieLens loaders on tiny files (exact values, every rejection) and on the real ML-100K."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.csvfile import iter_numeric_blocks
from fedrec.data.movielens import (
    ML100K_GENRES,
    load_ml1m,
    load_ml100k,
    load_ml100k_fold,
    load_ml100k_genres,
    load_movie_genres,
    load_movielens,
    load_movielens_csv,
    resolve_movielens_dir,
)
from fedrec.errors import ConfigError, DataError

Writer = Callable[..., Path]


# --------------------------------------------------------------------------- ML-100K, tiny


def test_ml100k_known_answer(ml100k_root: Path) -> None:
    inter = load_ml100k(ml100k_root)
    assert inter.user_ids.ids == ("1", "2", "3")
    assert inter.item_ids.ids == ("1", "2", "7", "10")
    assert inter.users.tolist() == [0, 1, 2, 0]
    assert inter.items.tolist() == [1, 0, 3, 2]
    assert inter.ratings.dtype == np.float32 and inter.ratings.tolist() == [3, 5, 1, 4]
    assert inter.timestamps.dtype == np.int64
    assert inter.timestamps.tolist() == [881250949, 891717742, 878887116, 881250950]


def test_ml100k_dataset_folder_itself(ml100k_root: Path) -> None:
    assert len(load_ml100k(ml100k_root / "ml-100k")) == 4
    assert resolve_movielens_dir(ml100k_root, "ml-100k") == ml100k_root / "ml-100k"


def test_ml100k_folds_share_index_space(ml100k_root: Path) -> None:
    full = load_ml100k(ml100k_root)
    ds = load_ml100k_fold(ml100k_root, 1)
    assert (ds.n_users, ds.n_items) == (3, 4)
    assert ds.train.item_ids == ds.test.item_ids == full.item_ids
    assert ds.test.users.tolist() == [2] and ds.test.items.tolist() == [3]
    assert ds.rating_scale == (1.0, 5.0)
    ua = load_ml100k_fold(ml100k_root, "a")
    assert ua.test.items.tolist() == [0] and ua.train.users.tolist() == [0]


@pytest.mark.parametrize("fold", [0, 6, "c", True])
def test_ml100k_bad_fold(ml100k_root: Path, fold: object) -> None:
    with pytest.raises(ConfigError, match="valid folds: 1, 2, 3, 4, 5, 'a', 'b'"):
        load_ml100k_fold(ml100k_root, fold)  # type: ignore[arg-type]


def test_ml100k_genres(ml100k_root: Path) -> None:
    genres = load_ml100k_genres(ml100k_root)
    assert genres.shape == (4, 19) and genres.dtype == np.float32
    assert np.flatnonzero(genres[0]).tolist() == [3, 4, 5]  # item id 1
    assert np.flatnonzero(genres[3]).tolist() == [1]  # item id 10
    assert ML100K_GENRES[3] == "Animation"


@pytest.mark.parametrize(
    ("text", "line", "rule"),
    [
        ("1\t2\t3\t5\n1\t2\t7\t6\n", 2, "rating 7.0 outside scale [1, 5]"),
        ("1\t2\t3\t5\n1\t2\t0\t6\n", 2, "rating 0.0 outside scale [1, 5]"),
        ("1\t2\t3.5\t5\n", 1, "rating 3.5 is not a multiple of 1 from 1"),
        ("1\t2\t3\n", 1, "expected 4 fields separated by '\\t', found 3"),
        ("1\t2\t3\t5\n\n1\tx\t3\t6\n", 3, "field 2 'x' is not a number"),
        ("1.5\t2\t3\t5\n", 1, "user id 1.5 is not an integer"),
        ("1\t2\t3\t5.25\n", 1, "timestamp 5.25 is not an integer"),
        ("1\t99\t3\t5\n", 1, "item id 99 is not listed in u.item"),
        ("4\t1\t3\t5\n", 1, "user id 4 is not listed in u.user"),
    ],
)
def test_ml100k_malformed_udata(
    ml100k_root: Path, write_file: Writer, text: str, line: int, rule: str
) -> None:
    path = write_file(ml100k_root / "ml-100k" / "u.data", text)
    with pytest.raises(DataError) as err:
        load_ml100k(ml100k_root)
    assert str(err.value) == f"{path} line {line}: {rule}"
    assert "u.data" in str(err.value)


def test_ml100k_empty_and_missing_files(ml100k_root: Path, write_file: Writer) -> None:
    folder = ml100k_root / "ml-100k"
    (folder / "u1.test").unlink()
    with pytest.raises(DataError, match=r"u1\.test: file not found"):
        load_ml100k_fold(ml100k_root, 1)
    write_file(folder / "u.data", "\n")
    with pytest.raises(DataError, match=r"u\.data: empty file"):
        load_ml100k(ml100k_root)
    (folder / "u.data").unlink()
    with pytest.raises(DataError, match=r"ml-100k: u\.data not found in .*ml-100k or"):
        load_ml100k(ml100k_root)


def test_ml100k_malformed_metadata(ml100k_root: Path, write_file: Writer) -> None:
    folder = ml100k_root / "ml-100k"
    write_file(folder / "u.user", "1|24|M|technician|85711\n1|53|F|other|94043\n")
    with pytest.raises(DataError, match=r"u\.user line 2: user id 1 already listed on line 1"):
        load_ml100k(ml100k_root)
    write_file(folder / "u.user", "1|24|M|technician|85711\nx|53|F|other|94043\n")
    with pytest.raises(DataError, match=r"u\.user line 2: user id 'x' is not an integer"):
        load_ml100k(ml100k_root)
    write_file(folder / "u.user", "1|24|M\n")
    with pytest.raises(DataError, match=r"u\.user line 1: expected at least 5 fields, found 3"):
        load_ml100k(ml100k_root)
    write_file(folder / "u.item", "1|T|d||u|" + "|".join(["0"] * 18 + ["2"]) + "\n")
    with pytest.raises(DataError, match=r"u\.item line 1: genre flags must be 0 or 1"):
        load_ml100k_genres(ml100k_root)


# --------------------------------------------------------------------------- ML-1M, tiny


def test_ml1m_known_answer(ml1m_dir: Path) -> None:
    inter = load_ml1m(ml1m_dir.parent)
    assert inter.user_ids.ids == ("1", "6") and inter.item_ids.ids == ("1", "3", "5")
    assert inter.users.tolist() == [0, 1, 0]
    assert inter.items.tolist() == [0, 1, 2]
    assert inter.ratings.tolist() == [5, 3, 1]
    assert inter.timestamps.tolist() == [978300760, 978302109, 978301968]
    genres, names = load_movie_genres(ml1m_dir, "ml-1m")
    assert names == ("Animation", "Children's", "Comedy", "Romance")
    assert genres.tolist() == [[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 0]]


def test_ml1m_malformed(ml1m_dir: Path, write_file: Writer) -> None:
    path = write_file(ml1m_dir / "ratings.dat", "1::1::5::978300760\n1::1::6::978300761\n")
    with pytest.raises(DataError) as err:
        load_ml1m(ml1m_dir)
    assert str(err.value) == f"{path} line 2: rating 6.0 outside scale [1, 5]"
    write_file(ml1m_dir / "ratings.dat", "1::1::5\n")
    with pytest.raises(
        DataError, match=r"ratings\.dat line 1: expected 4 fields separated by '::'"
    ):
        load_ml1m(ml1m_dir)
    write_file(ml1m_dir / "ratings.dat", "1::2::5::978300760\n")
    with pytest.raises(
        DataError, match=r"ratings\.dat line 1: item id 2 is not listed in movies\.dat"
    ):
        load_ml1m(ml1m_dir)


def test_ml1m_without_metadata_uses_rated_ids(ml1m_dir: Path) -> None:
    (ml1m_dir / "users.dat").unlink()
    (ml1m_dir / "movies.dat").unlink()
    inter = load_ml1m(ml1m_dir)
    assert inter.user_ids.ids == ("1", "6") and inter.item_ids.ids == ("1", "3", "5")


# --------------------------------------------------------------------------- CSV releases, tiny


def test_ml_csv_known_answer(ml_latest_small_dir: Path) -> None:
    inter = load_movielens("ml-latest-small", ml_latest_small_dir.parent)
    assert inter.user_ids.ids == ("1", "5") and inter.item_ids.ids == ("1", "4", "11")
    assert inter.users.tolist() == [0, 0, 1] and inter.items.tolist() == [0, 2, 1]
    assert inter.ratings.tolist() == [4.0, 4.5, 0.5]
    assert inter.timestamps.tolist() == [964982703, 964981247, 964982224]
    genres, names = load_movie_genres(ml_latest_small_dir, "ml-latest-small")
    assert names[:4] == ("Adventure", "Animation", "Comedy", "Drama")
    assert genres.shape == (3, len(names)) and genres[1].sum() == 0  # "(no genres listed)"


@pytest.mark.parametrize(
    ("body", "line", "rule"),
    [
        ("1,1,5.5,1\n", 2, "rating 5.5 outside scale [0.5, 5]"),
        ("1,1,0,1\n", 2, "rating 0.0 outside scale [0.5, 5]"),
        ("1,1,3.3,1\n", 2, "rating 3.3 is not a multiple of 0.5 from 0.5"),
        ("1,1,3\n", 2, "expected 4 fields separated by ',', found 3"),
        ("1,1,4,1\n1,2,4,1\n", 3, "item id 2 is not listed in movies.csv"),
    ],
)
def test_ml_csv_malformed(
    ml_latest_small_dir: Path, write_file: Writer, body: str, line: int, rule: str
) -> None:
    path = write_file(
        ml_latest_small_dir / "ratings.csv", "userId,movieId,rating,timestamp\n" + body
    )
    with pytest.raises(DataError) as err:
        load_movielens_csv(ml_latest_small_dir, "ml-latest-small")
    assert str(err.value) == f"{path} line {line}: {rule}"


def test_ml_csv_bad_header(ml_latest_small_dir: Path, write_file: Writer) -> None:
    write_file(ml_latest_small_dir / "ratings.csv", "user,movieId,rating,timestamp\n1,1,4,1\n")
    with pytest.raises(
        DataError,
        match=r"ratings\.csv line 1: unknown column 'userId'; "
        r"available columns: user, movieId, rating, timestamp",
    ):
        load_movielens_csv(ml_latest_small_dir, "ml-latest-small")


def test_ml_csv_empty_ratings(ml_latest_small_dir: Path, write_file: Writer) -> None:
    write_file(ml_latest_small_dir / "ratings.csv", "")
    with pytest.raises(DataError, match=r"ratings\.csv: empty file \(no header row\)"):
        load_movielens_csv(ml_latest_small_dir, "ml-latest-small")
    write_file(ml_latest_small_dir / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(
        DataError, match=r"ratings\.csv: empty file \(no data rows after the header"
    ):
        load_movielens_csv(ml_latest_small_dir, "ml-latest-small")


def test_ml_csv_header_columns_in_any_order(ml_latest_small_dir: Path, write_file: Writer) -> None:
    write_file(ml_latest_small_dir / "ratings.csv", "movieId,timestamp,userId,rating\n11,7,5,2.5\n")
    inter = load_movielens_csv(ml_latest_small_dir, "ml-latest-small")
    assert inter.items.tolist() == [2] and inter.ratings.tolist() == [2.5]
    assert inter.timestamps.tolist() == [7] and inter.user_ids.ids == ("5",)


def test_ml_csv_streams_in_blocks(
    ml_latest_small_dir: Path, write_file: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = "".join(
        f"{u},{(1, 4, 11)[u % 3]},{0.5 * (1 + u % 10)},{1000 + u}\n" for u in range(2000)
    )
    write_file(ml_latest_small_dir / "ratings.csv", "userId,movieId,rating,timestamp\n" + rows)
    monkeypatch.setattr("fedrec.data.csvfile.CHUNK_BYTES", 256)
    blocks = list(
        iter_numeric_blocks(
            ml_latest_small_dir / "ratings.csv", delimiter=",", n_fields=4, skip_lines=1
        )
    )
    assert len(blocks) > 50
    inter = load_movielens_csv(ml_latest_small_dir, "ml-latest-small")
    assert len(inter) == 2000 and inter.n_users == 2000
    assert inter.timestamps.tolist() == list(range(1000, 3000))


def test_unknown_release_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid: ml-100k, ml-1m"):
        load_movielens("ml-5m", tmp_path)
    with pytest.raises(DataError, match="ml-20m: ratings.csv not found"):
        load_movielens("ml-20m", tmp_path)


# --------------------------------------------------------------------------- real ML-100K


def test_real_ml100k_counts_and_speed(real_data_dir: Path) -> None:
    start = time.perf_counter()
    inter = load_ml100k(real_data_dir)
    elapsed = time.perf_counter() - start
    assert len(inter) == 100_000 and (inter.n_users, inter.n_items) == (943, 1682)
    assert np.unique(inter.users).size == 943 and np.unique(inter.items).size == 1682
    assert set(np.unique(inter.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter.user_ids.ids[:3] == ("1", "2", "3") and inter.item_ids.ids[-1] == "1682"
    assert elapsed < 1.0, f"u.data took {elapsed:.2f}s"


def test_real_ml100k_fold1_shares_index_space(real_data_dir: Path) -> None:
    full = load_ml100k(real_data_dir)
    ds = load_ml100k_fold(real_data_dir / "ml-100k", 1)
    assert (len(ds.train), len(ds.test)) == (80_000, 20_000)
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert ds.train.user_ids == ds.test.user_ids == full.user_ids
    assert ds.train.item_ids == ds.test.item_ids == full.item_ids
    key = lambda x: set(zip(x.users.tolist(), x.items.tolist(), strict=True))  # noqa: E731
    assert key(ds.train) | key(ds.test) == key(full)
    assert not key(ds.train) & key(ds.test)


def test_real_ml100k_genres(real_data_dir: Path) -> None:
    genres = load_ml100k_genres(real_data_dir)
    assert genres.shape == (1682, 19) and set(np.unique(genres).tolist()) <= {0.0, 1.0}
    assert np.flatnonzero(genres[0]).tolist() == [
        3,
        4,
        5,
    ]  # Toy Story: Animation, Children's, Comedy
