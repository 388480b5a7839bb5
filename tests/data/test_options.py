"""data_options: the csv.* and split* run-config keys and their defaults, spellings and rejections."""

from __future__ import annotations

import pytest

from fedrec.data.options import DATA_DEFAULTS, CsvOptions, SplitSpec, data_options
from fedrec.errors import ConfigError


def test_defaults_detect_everything_and_use_the_protocol_split() -> None:
    assert data_options(DATA_DEFAULTS) == (CsvOptions(), SplitSpec())
    assert CsvOptions().weight_col == "none" and CsvOptions().header is None


@pytest.mark.parametrize(("sep", "want"), [("tab", "\t"), ("\\t", "\t"), ("\t", "\t"), ("::", "::"), (",", ","),
                                           ("space", " "), ("Comma", ","), ("auto", None)])
def test_separator_spellings(sep: str, want: str | None) -> None:
    assert data_options({"csv.sep": sep})[0].sep == want


def test_columns_header_and_split_values() -> None:
    csv, split = data_options({"csv.header": False, "csv.user-col": "3", "csv.item-col": 0, "csv.rating-col": "Stars",
                               "csv.weight-col": "plays", "csv.weight-alpha": 2, "split": "files",
                               "split.test-file": "t.tsv", "split.seed": 7.0, "dataset": "csv"})
    assert (csv.header, csv.user_col, csv.item_col, csv.rating_col, csv.weight_col) == (False, 3, 0, "Stars", "plays")
    assert csv.weight_alpha == 2.0 and split == SplitSpec("files", 7, 0.2, "t.tsv")
    assert data_options({"csv.header": "TRUE"})[0].header is True


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"csv.sep": ""}, "csv.sep: a separator"),
        ({"csv.sep": " ,"}, "csv.sep: ' ,' cannot separate fields"),
        ({"csv.item-col": 1.5}, "csv.item-col: a column name or 0-based index"),
        ({"csv.item-col": " "}, "csv.item-col: empty"),
        ({"csv.weight-alpha": "lots"}, "csv.weight-alpha"),
        ({"split.seed": -1}, "split.seed: a non-negative integer"),
        ({"split.fraction": 0}, "split.fraction"),
        ({"split": "files", "dataset": "ml-100k"}, "pass --set dataset=csv"),
        ({"split.test-file": 3, "split": "files"}, "split.test-file: a path"),
    ],
)
def test_bad_values_name_the_key(flat: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        data_options(flat)
