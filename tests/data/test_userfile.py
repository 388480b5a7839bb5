"""read_user_file: separator and header detection, column mapping, count weights, every rejection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.options import CsvOptions
from fedrec.data.userfile import read_user_file, resolve_data_file
from fedrec.errors import DataError

Writer = Callable[..., Path]

PLAYS = "user0\tartist3\t5\nuser0\tartist1\t1\nuser1\tartist3\t0\nuser2\tartist7\t12\n"
"""Headerless play counts with string ids: no row may be taken for a header."""


def test_headerless_dat_keeps_its_first_row_and_reads_movielens_layout(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    got = read_user_file(path, CsvOptions())
    inter = got.inter
    assert len(inter) == 3 and inter.user_ids.ids == ("1", "2") and inter.item_ids.ids == ("1193", "661")
    assert inter.ratings.tolist() == [5.0, 3.0, 4.0]
    assert inter.timestamps.tolist() == [978300760, 978302109, 978298413]
    assert got.used == {"user": 0, "item": 1, "rating": 2, "timestamp": 3} and got.has_timestamps


def test_headerless_play_counts_keep_every_row_and_name_the_unused_column(
    tmp_path: Path, write_file: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_file(tmp_path / "plays.tsv", PLAYS)
    with caplog.at_level(logging.WARNING):
        got = read_user_file(path, CsvOptions())
    assert len(got.inter) == 4 and got.inter.user_ids.ids[0] == "user0"
    assert got.inter.weights.tolist() == [1.0] * 4 and got.inter.ratings.tolist() == [1.0] * 4
    assert not got.has_timestamps
    assert "csv.weight-col=2" in caplog.text


def test_count_weights_known_answer(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "plays.tsv", PLAYS)
    got = read_user_file(path, CsvOptions(weight_col=2, weight_alpha=2.0))
    assert np.allclose(got.inter.weights, 1 + 2 * np.log1p([5, 1, 0, 12]))


def test_header_with_other_names_maps_columns(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.csv", "userID,itemID,weight\na,x,3\nb,y,1\n")
    auto = read_user_file(path, CsvOptions(weight_col="weight", weight_alpha=1.0))
    assert auto.used == {"user": 0, "item": 1, "weight": 2}
    assert auto.inter.user_ids.ids == ("a", "b")
    assert np.allclose(auto.inter.weights, 1 + np.log1p([3, 1]))
    by_index = read_user_file(path, CsvOptions(header=True, user_col=1, item_col=0))
    assert by_index.inter.user_ids.ids == ("x", "y")


def test_header_detected_by_text_above_numbers_and_explicit_names(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.txt", "who;what;stars;when\n7;9;4;100\n8;9;2;50\n")
    got = read_user_file(path, CsvOptions(user_col="who", item_col="what", rating_col="stars", timestamp_col="when"))
    assert len(got.inter) == 2 and got.inter.ratings.tolist() == [4.0, 2.0]
    assert got.inter.timestamps.tolist() == [100, 50]


def test_explicit_header_false_keeps_a_row_that_looks_like_names(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.csv", "user,item\nu1,i1\n")
    assert len(read_user_file(path, CsvOptions(header=False)).inter) == 2
    assert len(read_user_file(path, CsvOptions()).inter) == 1


def test_separators_whitespace_and_given(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.data", "1  2   3\n4 5 6\n")
    assert read_user_file(path, CsvOptions()).inter.item_ids.ids == ("2", "5")
    path = write_file(tmp_path / "pipes.txt", "a|b\nc|d\n")
    assert read_user_file(path, CsvOptions(sep="|")).inter.user_ids.ids == ("a", "c")


def test_folder_with_one_file_is_read_and_two_are_named(tmp_path: Path, write_file: Writer) -> None:
    write_file(tmp_path / "d" / "plays.tsv", PLAYS)
    write_file(tmp_path / "d" / "notes.md", "not data")
    assert resolve_data_file(tmp_path / "d") == tmp_path / "d" / "plays.tsv"
    write_file(tmp_path / "d" / "more.csv", "a,b\n")
    with pytest.raises(DataError, match=r"folder with 2 data files \(more\.csv, plays\.tsv\); pass one of them"):
        resolve_data_file(tmp_path / "d")
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="folder with no data file"):
        resolve_data_file(tmp_path / "e")


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("u\ti\t3\nv\tj\n", {}, r"line 2: expected 3 fields separated by '\\t', found 2"),
        (PLAYS.replace("\t12", "\tlots"), {"weight_col": 2}, r"line 4: count \(column 2\) 'lots' is not a number"),
        (PLAYS.replace("\t12", "\t-2"), {"weight_col": 2}, r"line 4: count \(column 2\) -2.0 is negative"),
        (PLAYS.replace("\t12", "\tnan"), {"weight_col": 2}, r"line 4: count \(column 2\) nan is not finite"),
        (PLAYS, {"rating_col": 2, "weight_col": 2}, "csv.rating-col and csv.weight-col both name column 2"),
        (PLAYS, {"user_col": 5}, r"csv.user-col=5 is out of range: the file has 3 columns"),
        (PLAYS, {"user_col": "userID"}, "names a column, but the file has no header; pass a 0-based index"),
        ("user\titem\nu\t\n", {}, r"line 2, column 1: empty item id"),
        ("userID,itemID\na,b\n", {"user_col": "uid2"}, r"line 1: csv.user-col: no column 'uid2'; available"),
        ("who,what\n1,2\n", {"header": True}, "line 1: no user column found among: who, what; pass --set csv.user-col"),
        ("u1\nu2\n", {}, "cannot detect the separator .*pass --set csv.sep"),
        ("u,i,t\na,b,yesterday\n", {"header": True, "user_col": 0, "item_col": 1, "timestamp_col": 2},
         "timestamp 'yesterday' is neither integer seconds nor an ISO-8601"),
    ],
)
def test_malformed_files_name_line_column_or_key(
    tmp_path: Path, write_file: Writer, text: str, options: dict[str, object], message: str
) -> None:
    path = write_file(tmp_path / "bad.tsv", text)
    with pytest.raises(DataError, match=message):
        read_user_file(path, CsvOptions(**options))  # type: ignore[arg-type]


def test_empty_missing_and_undecodable(tmp_path: Path, write_file: Writer) -> None:
    with pytest.raises(DataError, match="empty file"):
        read_user_file(write_file(tmp_path / "e.tsv", "\n\n"), CsvOptions())
    with pytest.raises(DataError, match="file not found"):
        read_user_file(tmp_path / "missing.tsv", CsvOptions())
    bad = tmp_path / "latin.tsv"
    bad.write_bytes(b"u\ti\n\xe9\tx\n")
    with pytest.raises(DataError, match=r"line 2: not valid utf-8-sig text"):
        read_user_file(bad, CsvOptions())
