"""How a run reads the user's own interaction file and splits it: the ``csv.*`` and ``split.*`` keys.

Every entry point (``fedrec train-central``, ``fedrec simulate``, ``fedrec
sweep``, ``flwr run``) reads these keys from the same flat run configuration,
so this module is their one home: defaults (:data:`DATA_DEFAULTS`), the frozen
:class:`CsvOptions` and :class:`SplitSpec` the loaders take, and the parser
that rejects a bad value naming its key and what to pass instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedrec.errors import ConfigError

AUTO = "auto"
"""Column or option value meaning "detect it from the file"."""

NONE = "none"
"""Column value meaning "the file has no such column" (or: do not use it)."""

Column = int | str
"""A column: its 0-based index, its header name, :data:`AUTO` or :data:`NONE`."""

SPLITS: tuple[str, ...] = ("protocol", "random-one", "random-fraction", "leave-last", "files")
"""``split`` values: the protocol's own split, a seeded random hold-out (one
item or a fraction per user), each user's latest interaction, or the user's own
train and test files."""

SEPARATORS: dict[str, str] = {
    "tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " ", "whitespace": " ",
}
"""Spellings of ``csv.sep`` that are awkward on a command line; ``" "`` means runs of whitespace."""

COLUMN_ROLES: tuple[str, ...] = ("user", "item", "rating", "timestamp", "weight")

DATA_DEFAULTS: dict[str, bool | int | float | str] = {
    "csv.header": AUTO,
    "csv.sep": AUTO,
    "csv.user-col": AUTO,
    "csv.item-col": AUTO,
    "csv.rating-col": AUTO,
    "csv.timestamp-col": AUTO,
    "csv.weight-col": NONE,
    "csv.weight-alpha": 1.0,
    "split": "protocol",
    "split.seed": 0,
    "split.fraction": 0.2,
    "split.test-file": "",
}
"""Run-config keys of this module and their defaults (merged into :mod:`fedrec.runconfig`)."""


@dataclass(frozen=True)
class CsvOptions:
    """How to read a delimited interaction file.

    Attributes
    ----------
    header:
        ``True``/``False``, or ``None`` to detect: row 1 is a header when one of
        its fields is a known column name (``user``, ``itemID``, ``rating``, ...
        or a name given below) or is text above a column that is numeric in
        every following sampled row. A data row is never taken as a header by
        the second rule unless its own values differ in kind from the rows below.
    sep:
        Field separator (``"\\t"``, ``","``, ``"::"``, ``" "`` for whitespace),
        or ``None`` to detect it from the first lines.
    user_col, item_col, rating_col, timestamp_col, weight_col:
        0-based index, header name, :data:`AUTO` (user/item: a known name, else
        columns 0 and 1 of a headerless file; rating/timestamp: a known header
        name, or the MovieLens ``user item rating timestamp`` layout of a
        headerless four-column file) or :data:`NONE`.
    weight_alpha:
        Confidence weight of a row with count ``c`` in ``weight_col``:
        ``1 + weight_alpha * log(1 + c)`` (Hu et al. 2008). Without a weight
        column every row weighs 1.
    """

    header: bool | None = None
    sep: str | None = None
    user_col: Column = AUTO
    item_col: Column = AUTO
    rating_col: Column = AUTO
    timestamp_col: Column = AUTO
    weight_col: Column = NONE
    weight_alpha: float = 1.0

    def column(self, role: str) -> Column:
        """The column reference of ``role`` (one of :data:`COLUMN_ROLES`)."""
        value: Column = getattr(self, f"{role}_col")
        return value


@dataclass(frozen=True)
class SplitSpec:
    """How the interactions become train and test.

    Attributes
    ----------
    kind:
        One of :data:`SPLITS`. ``protocol`` is E1's k-fold (ML-100K: its
        official folds) and R1's leave-last-out, which needs timestamps.
    seed:
        Seed of the random hold-outs (``random-one``, ``random-fraction``).
    fraction:
        Per-user test fraction of ``random-fraction`` (each user keeps at least
        one training row).
    test_file:
        ``files`` only: the test file, read with the same :class:`CsvOptions`;
        ``data-dir`` is then the training file (or a folder holding
        ``train.*`` and ``test.*``).
    """

    kind: str = "protocol"
    seed: int = 0
    fraction: float = 0.2
    test_file: str = ""


def data_options(flat: Mapping[str, Any]) -> tuple[CsvOptions, SplitSpec]:
    """The ``csv.*`` and ``split*`` keys of a resolved flat config, validated."""
    get = {**DATA_DEFAULTS, **{k: v for k, v in flat.items() if k in DATA_DEFAULTS}}
    csv_options = CsvOptions(
        header=_header(get["csv.header"]),
        sep=_separator(get["csv.sep"]),
        **{f"{role}_col": _column(f"csv.{role}-col", get[f"csv.{role}-col"]) for role in COLUMN_ROLES},
        weight_alpha=_alpha(get["csv.weight-alpha"]),
    )
    split = SplitSpec(kind=_split_kind(get["split"]), seed=_seed(get["split.seed"]),
                      fraction=_fraction(get["split.fraction"]),
                      test_file=_text("split.test-file", get["split.test-file"]))
    if split.kind == "files" and flat.get("dataset", "csv") != "csv":
        raise ConfigError("split: 'files' reads your own train and test files; pass --set dataset=csv")
    if split.test_file and split.kind != "files":
        raise ConfigError(f"split.test-file: only used with split=files (split is {split.kind!r}); "
                          "pass --set split=files")
    return csv_options, split


def _header(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in (AUTO, "true", "false", "yes", "no"):
        return None if text == AUTO else text in ("true", "yes")
    raise ConfigError(f"csv.header: 'auto', 'true' or 'false', got {value!r}")


def _separator(value: Any) -> str | None:
    if not isinstance(value, str) or value == "":
        raise ConfigError(f"csv.sep: a separator such as ',', 'tab', '::' or 'auto', got {value!r}")
    if value.lower() == AUTO:
        return None
    sep = SEPARATORS.get(value.lower(), value)
    if any(c in sep for c in '\r\n"') or (sep != " " and sep.strip(" ") != sep):
        raise ConfigError(f"csv.sep: {value!r} cannot separate fields; pass e.g. ',', 'tab', '::' or 'space'")
    return sep


def _column(key: str, value: Any) -> Column:
    if isinstance(value, bool) or isinstance(value, float):
        raise ConfigError(f"{key}: a column name or 0-based index, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: a 0-based column index is >= 0, got {value}")
        return value
    text = str(value).strip()
    if not text:
        raise ConfigError(f"{key}: empty; pass a column name, a 0-based index, 'auto' or 'none'")
    if text.isdigit():
        return int(text)
    if text.lower() in (AUTO, NONE):
        return text.lower()
    return text


def _alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"csv.weight-alpha: a finite number >= 0, got {value!r}")
    return float(value)


def _split_kind(value: Any) -> str:
    if value not in SPLITS:
        raise ConfigError(f"split: {value!r} is not one of {', '.join(SPLITS)}")
    return str(value)


def _seed(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"split.seed: a non-negative integer, got {value!r}")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"split.fraction: a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: a path (string), got {value!r}")
    return value
