"""Numeric block reader and the generic CSV/TSV loader: exact values and every rejection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.csvfile import iter_numeric_blocks, load_csv
from fedrec.errors import DataError

Writer = Callable[..., Path]


def _read_all(path: Path, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(iter_numeric_blocks(path, **kwargs))  # type: ignore[arg-type]
    return (np.concatenate([b.lines for b in blocks]), np.concatenate([b.values for b in blocks]))


# --------------------------------------------------------------------------- numeric reader


def test_numeric_known_answer_with_blank_lines_and_crlf(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "r.dat", "1::2::3.5::10\r\n\r\n4::5::1::20\r\n\n")
    lines, values = _read_all(path, delimiter="::", n_fields=4)
    assert lines.tolist() == [1, 3]
    assert values.tolist() == [[1, 2, 3.5, 10], [4, 5, 1, 20]]


def test_numeric_no_trailing_newline_and_header(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "r.csv", "a,b\n7,8\n9,10")
    lines, values = _read_all(path, delimiter=",", n_fields=2, skip_lines=1)
    assert lines.tolist() == [2, 3]
    assert values.tolist() == [[7, 8], [9, 10]]


def test_numeric_spaces_around_fields_take_the_exact_path(
    tmp_path: Path, write_file: Writer
) -> None:
    path = write_file(tmp_path / "r.csv", " 1 , 2\n3,4 \n")
    _, values = _read_all(path, delimiter=",", n_fields=2)
    assert values.tolist() == [[1, 2], [3, 4]]


def test_numeric_blocks_keep_line_numbers(tmp_path: Path, write_file: Writer) -> None:
    rows = [f"{i}\t{i + 1}\n" for i in range(500)]
    path = write_file(tmp_path / "r.tsv", "".join(rows))
    blocks = list(iter_numeric_blocks(path, delimiter="\t", n_fields=2, chunk_bytes=64))
    assert len(blocks) > 10
    lines = np.concatenate([b.lines for b in blocks])
    values = np.concatenate([b.values for b in blocks])
    assert lines.tolist() == list(range(1, 501))
    assert values[:, 0].tolist() == list(range(500))


def test_numeric_error_line_number_in_a_later_block(tmp_path: Path, write_file: Writer) -> None:
    rows = [f"{i}\t1\n" for i in range(300)]
    rows[250] = "250\tx\n"
    path = write_file(tmp_path / "r.tsv", "".join(rows))
    with pytest.raises(DataError, match=r"r\.tsv line 251: field 2 'x' is not a number"):
        list(iter_numeric_blocks(path, delimiter="\t", n_fields=2, chunk_bytes=100))


@pytest.mark.parametrize(
    ("text", "line", "rule"),
    [
        ("1\t2\t3\n4\t5\n", 2, "expected 3 fields separated by '\\t', found 2"),
        ("1\t2\t3\n4\t5\t6\t7\n", 2, "expected 3 fields separated by '\\t', found 4"),
        ("1\t2\t3\n\n4\tfoo\t6\n", 3, "field 2 'foo' is not a number"),
        ("1\t2\t3\n4\t\t6\n", 2, "field 2 '' is not a number"),
        ("1\t2 5\t3\n1\t\t3\n", 1, "field 2 '2 5' is not a number"),
        ("1\t2\t3\n4\t5\t0x1\n", 2, "field 3 '0x1' is not a number"),
    ],
)
def test_numeric_malformed_lines(
    tmp_path: Path, write_file: Writer, text: str, line: int, rule: str
) -> None:
    path = write_file(tmp_path / "bad.tsv", text)
    with pytest.raises(DataError) as err:
        list(iter_numeric_blocks(path, delimiter="\t", n_fields=3))
    assert str(err.value) == f"{path} line {line}: {rule}"


def test_numeric_empty_and_missing(tmp_path: Path, write_file: Writer) -> None:
    empty = write_file(tmp_path / "empty.dat", "")
    with pytest.raises(DataError, match=r"empty\.dat: empty file"):
        list(iter_numeric_blocks(empty, delimiter="\t", n_fields=2))
    header_only = write_file(tmp_path / "h.csv", "a,b\n")
    with pytest.raises(DataError, match=r"h\.csv: empty file \(no data rows after the header\)"):
        list(iter_numeric_blocks(header_only, delimiter=",", n_fields=2, skip_lines=1))
    with pytest.raises(DataError, match=r"nope\.dat: file not found"):
        list(iter_numeric_blocks(tmp_path / "nope.dat", delimiter="\t", n_fields=2))


# --------------------------------------------------------------------------- load_csv


def test_load_csv_known_answer(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(
        tmp_path / "log.csv",
        '\ufeffitem,user,score,when\nb,"alice, jr",4.5,100\na,bob,3,200\n\nb,bob,1,300\n',
    )
    inter = load_csv(path, rating_col="score", timestamp_col="when", rating_scale=(1, 5))
    assert inter.user_ids.ids == ("alice, jr", "bob")
    assert inter.item_ids.ids == ("b", "a")
    assert inter.users.tolist() == [0, 1, 1]
    assert inter.items.tolist() == [0, 1, 0]
    assert inter.ratings.dtype == np.float32 and inter.ratings.tolist() == [4.5, 3.0, 1.0]
    assert inter.timestamps.dtype == np.int64 and inter.timestamps.tolist() == [100, 200, 300]


def test_load_csv_implicit_tsv_by_extension(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.tsv", "user\titem\nu1\ti1\nu2\ti1\n")
    inter = load_csv(path)
    assert inter.ratings.tolist() == [1.0, 1.0]
    assert inter.timestamps.tolist() == [0, 0]
    assert (inter.n_users, inter.n_items) == (2, 1)


def test_load_csv_sniffs_delimiter_from_header(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.txt", "user;item;rating\n1;2;5\n")
    inter = load_csv(path, rating_col="rating")
    assert inter.user_ids.ids == ("1",) and inter.ratings.tolist() == [5.0]


def test_load_csv_iso_timestamps(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "t.csv", "user,item,ts\n1,2,1970-01-02T00:00:00\n1,3,86401\n")
    inter = load_csv(path, timestamp_col="ts")
    assert inter.timestamps.tolist() == [86400, 86401]


def test_load_csv_unknown_column_lists_available(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.csv", "userId,movieId,rating\n1,2,3\n")
    with pytest.raises(DataError) as err:
        load_csv(path, user_col="userId", item_col="itemId")
    msg = str(err.value)
    assert str(path) in msg and "line 1" in msg
    assert "unknown column 'itemId'" in msg
    assert "available columns: userId, movieId, rating" in msg


@pytest.mark.parametrize(
    ("text", "line", "rule"),
    [
        ("user,item,r\n1,2,3\n1,2\n", 3, "expected 3 fields, found 2"),
        ("user,item,r\n1,2,3\n1,2,3,4\n", 3, "expected 3 fields, found 4"),
        ("user,item,r\n1,2,3\n1,2,good\n", 3, "rating 'good' is not a number"),
        ("user,item,r\n1,2,3\n\n1,2,7\n", 4, "rating 7.0 outside scale [1, 5]"),
        ("user,item,r\n1,2,nan\n", 2, "rating nan outside scale [1, 5]"),
        ("user,item,r\n1,,3\n", 2, "empty item id"),
    ],
)
def test_load_csv_malformed(
    tmp_path: Path, write_file: Writer, text: str, line: int, rule: str
) -> None:
    path = write_file(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as err:
        load_csv(path, rating_col="r", rating_scale=(1, 5))
    assert str(err.value) == f"{path} line {line}: {rule}"


def test_load_csv_bad_timestamp(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "bad.csv", "user,item,t\n1,2,5\n1,3,yesterday\n")
    with pytest.raises(DataError, match=r"bad\.csv line 3: timestamp 'yesterday' is neither"):
        load_csv(path, timestamp_col="t")
    path = write_file(tmp_path / "frac.csv", "user,item,t\n1,2,5.5\n")
    with pytest.raises(DataError, match=r"frac\.csv line 2: timestamp 5\.5 is not an integer"):
        load_csv(path, timestamp_col="t")


def test_load_csv_empty_missing_header_only(tmp_path: Path, write_file: Writer) -> None:
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        load_csv(write_file(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match=r"h\.csv: empty file \(no data rows after the header\)"):
        load_csv(write_file(tmp_path / "h.csv", "user,item\n"))
    with pytest.raises(DataError, match=r"absent\.csv: file not found"):
        load_csv(tmp_path / "absent.csv")


def test_load_csv_undetectable_delimiter(tmp_path: Path, write_file: Writer) -> None:
    path = write_file(tmp_path / "log.txt", "user item\n1 2\n")
    with pytest.raises(DataError, match=r"log\.txt line 1: cannot detect the delimiter"):
        load_csv(path)
    inter = load_csv(path, delimiter=" ")
    assert inter.items.tolist() == [0]


def test_load_csv_bad_encoding_and_csv_syntax(tmp_path: Path, write_file: Writer) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"user,item\nalice,caf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv line \d: not valid utf-8-sig text"):
        load_csv(path)
    assert load_csv(path, encoding="latin-1").item_ids.ids == ("café",)
    path = write_file(tmp_path / "huge.csv", "user,item\n1,2\n3," + "x" * 200_000 + "\n")
    with pytest.raises(DataError, match=r"huge\.csv line 3: field larger than field limit"):
        load_csv(path)
