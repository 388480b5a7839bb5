"""The user's own interaction file: separator and header detection, column mapping, weights.

:func:`read_user_file` reads any delimited log (``.csv``, ``.tsv``, MovieLens
``.dat``, headed or not) as :class:`CsvOptions` say, detecting what is left at
``auto`` from the first lines. Detection never silently eats a data row:
row 1 is a header only when it names a known column or holds text above a
column that is numeric in every sampled row below it. A column the file has but
the run does not use (say, play counts) is reported with the key that would use
it, because a silently dropped column changes what the model learns.

Every rejection is a :class:`~fedrec.errors.DataError` naming the file, the line
and the column, or the ``csv.*`` key to change.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from fedrec.data.csvfile import _floats, _timestamps, check_ratings, open_binary
from fedrec.data.interactions import IdMap, Interactions
from fedrec.data.options import AUTO, COLUMN_ROLES, NONE, Column, CsvOptions
from fedrec.errors import DataError

logger = logging.getLogger(__name__)

DATA_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".tab", ".dat", ".txt", ".data")
"""File endings a ``data-dir`` folder is searched for."""

SAMPLE_LINES = 50
"""Non-blank lines read to detect the separator, the header and the MovieLens layout."""

ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "user_id", "uid", "u", "users", "visitorid", "customer", "customerid",
             "customer_id", "member", "memberid", "reviewerid", "profile"),
    "item": ("item", "itemid", "item_id", "iid", "i", "items", "movie", "movieid", "movie_id", "artist",
             "artistid", "artist_id", "track", "trackid", "track_id", "song", "songid", "product", "productid",
             "product_id", "asin", "business_id", "book", "isbn"),
    "rating": ("rating", "ratings", "score", "stars", "rate", "bookrating", "book_rating"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "unixtime", "unix_timestamp", "created_at",
                  "event_time"),
    "weight": ("weight", "count", "counts", "plays", "playcount", "play_count", "plays_count", "n", "clicks",
               "frequency", "freq", "quantity", "listens", "views"),
}
"""Header names (case-insensitive, ``-``/space read as ``_``) recognised for each column role."""

_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_CANDIDATE_SEPS = ("::", "\t", ",", ";", "|", " ")
_CHUNK_ROWS = 200_000
_UNIX_1973 = 1e8


@dataclass(frozen=True)
class UserFile:
    """A read interaction file and what was found in it.

    Attributes
    ----------
    inter:
        The rows; ``weights`` are ``1 + alpha * log(1 + c)`` with a weight
        column, else all ones; ``ratings`` are 1.0 without a rating column.
    path:
        The file actually read (a folder's one data file).
    columns:
        Header names, or ``"0".."n-1"`` for a headerless file (for messages).
    used:
        Role -> 0-based column index, for every role read.
    """

    inter: Interactions
    path: Path
    columns: tuple[str, ...]
    used: dict[str, int]

    @property
    def has_timestamps(self) -> bool:
        """True when the file has a timestamp column whose values are not all equal."""
        stamps = self.inter.timestamps
        return "timestamp" in self.used and len(stamps) > 0 and int(stamps.min()) != int(stamps.max())

    def describe_columns(self) -> str:
        """``0 'user', 1 'item', 2 'plays'`` (or ``0, 1, 2`` headerless) for error messages."""
        if all(name == str(i) for i, name in enumerate(self.columns)):
            return ", ".join(self.columns)
        return ", ".join(f"{i} {name!r}" for i, name in enumerate(self.columns))


def resolve_data_file(path: Path, *, key: str = "data-dir") -> Path:
    """``path`` itself, or the one data file in the folder ``path``.

    Why: a folder of logs is what people have; reading one of several files
    silently would train on the wrong one, so more than one candidate is an
    error naming them.
    """
    if not path.is_dir():
        return path
    found = data_files(path)
    if len(found) == 1:
        logger.warning("%s %s is a folder: reading its one data file %s", key, path, found[0].name)
        return found[0]
    if not found:
        raise DataError(f"{path}: {key} is a folder with no data file ({', '.join(DATA_SUFFIXES)}); "
                        "pass the file itself")
    names = ", ".join(p.name for p in found)
    raise DataError(f"{path}: {key} is a folder with {len(found)} data files ({names}); pass one of them as {key}")


def data_files(folder: Path) -> list[Path]:
    """Visible files in ``folder`` whose ending is one of :data:`DATA_SUFFIXES`, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DATA_SUFFIXES)


def train_test_files(folder: Path) -> tuple[Path, Path] | None:
    """``(train.*, test.*)`` when ``folder`` holds exactly one of each, else ``None``."""
    found = data_files(folder)
    train = [p for p in found if p.stem.lower() == "train"]
    test = [p for p in found if p.stem.lower() == "test"]
    return (train[0], test[0]) if len(train) == 1 and len(test) == 1 else None


def read_user_file(path: str | Path, options: CsvOptions, *, rating_scale: tuple[float, float] | None = None,
                   encoding: str = "utf-8-sig") -> UserFile:
    """Read ``path`` (a file, or a folder with one data file) as ``options`` say.

    Users and items may be any strings; dense indices follow first appearance.

    Raises
    ------
    DataError
        Missing/empty/undecodable file, undetectable separator, unknown or
        out-of-range column, wrong field count, non-numeric rating, weight or
        timestamp, negative count, rating outside ``rating_scale``.
    """
    path = resolve_data_file(Path(path))
    sample = _sample(path, encoding)
    sep = options.sep if options.sep is not None else _sniff_separator(path, sample)
    rows = [fields for _, fields in _split_lines(iter(sample), sep)]
    n_fields = len(rows[0])
    header = options.header if options.header is not None else _looks_like_header(rows, options)
    names = tuple(f.strip() for f in rows[0]) if header else tuple(str(i) for i in range(n_fields))
    used = _resolve_columns(path, names if header else None, rows[1:] if header else rows, options)
    _report_unused(path, names, used, header)
    inter = _read_rows(path, sep, n_fields, header, used, options, rating_scale, encoding)
    logger.info("loaded %s: %d rows, %d users, %d items (columns %s)", path, len(inter), inter.n_users,
                inter.n_items, ", ".join(f"{role}={names[i]}" for role, i in used.items()))
    return UserFile(inter, path, names, used)


# --------------------------------------------------------------------------- detection


def _sample(path: Path, encoding: str) -> list[str]:
    lines: list[str] = []
    with open_binary(path) as raw:
        for line_no, data in enumerate(raw, start=1):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} line {line_no}: not valid {encoding} text ({exc.reason})") from None
            if text.strip():
                lines.append(text if line_no > 1 else text.lstrip("\ufeff"))
            if len(lines) >= SAMPLE_LINES:
                break
    if not lines:
        raise DataError(f"{path}: empty file (no data rows)")
    return lines


def _sniff_separator(path: Path, sample: list[str]) -> str:
    """The first candidate splitting line 1 into >= 2 fields and most sampled lines alike.

    ``.tsv``/``.tab`` prefer tab and ``.csv`` comma when those fit. A minority
    of ragged lines does not change the choice, so the reader can then name the
    bad line instead of failing here.
    """
    preferred = {".tsv": "\t", ".tab": "\t", ".csv": ","}.get(path.suffix.lower())
    order = ([preferred] if preferred else []) + [s for s in _CANDIDATE_SEPS if s != preferred]
    for sep in order:
        counts = [len(fields) for _, fields in _split_lines(iter(sample), sep)]
        alike = sep == preferred or counts.count(counts[0]) >= 0.8 * len(counts)
        if counts and counts[0] >= 2 and alike:
            return sep
    raise DataError(f"{path} line 1: cannot detect the separator (tried '::', tab, ',', ';', '|', spaces: "
                    "none splits the lines alike); pass --set csv.sep=<separator>")


def _split_lines(lines: Iterator[str], sep: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank line; quoting only for one-character separators."""
    if len(sep) == 1 and sep != " ":
        reader = csv.reader(lines, delimiter=sep)
        for row in reader:
            if row and not (len(row) == 1 and not row[0].strip()):
                yield reader.line_num, row
        return
    for line_no, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield line_no, (text.split() if sep == " " else text.split(sep))


def _normal(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _is_number(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text))


def _looks_like_header(rows: list[list[str]], options: CsvOptions) -> bool:
    """Row 1 names a known or requested column, or is text above an always-numeric column."""
    known = {_normal(a) for names in ALIASES.values() for a in names}
    known |= {_normal(c) for c in map(options.column, COLUMN_ROLES) if isinstance(c, str) and c not in (AUTO, NONE)}
    first = rows[0]
    if any(_normal(f) in known for f in first):
        return True
    below = [r for r in rows[1:] if len(r) == len(first)]
    return bool(below) and any(
        not _is_number(first[j]) and all(_is_number(r[j]) for r in below) for j in range(len(first)))


def _resolve_columns(path: Path, header: tuple[str, ...] | None, data: list[list[str]],
                     options: CsvOptions) -> dict[str, int]:
    """Role -> column index for every role the options and the file provide."""
    n_fields = len(header) if header is not None else len(data[0]) if data else 0
    used: dict[str, int] = {}
    for role in COLUMN_ROLES:
        ref = options.column(role)
        index = _column_index(path, role, ref, header, n_fields, data)
        if index is None:
            continue
        clash = [r for r, i in used.items() if i == index]
        if clash:
            raise DataError(f"{path}: csv.{clash[0]}-col and csv.{role}-col both name column {index}; "
                            f"pass a different csv.{role}-col (or 'none')")
        used[role] = index
    return used


def _column_index(path: Path, role: str, ref: Column, header: tuple[str, ...] | None, n_fields: int,
                  data: list[list[str]]) -> int | None:
    key = f"csv.{role}-col"
    listing = ", ".join(header) if header is not None else f"0..{n_fields - 1} (no header)"
    if ref == NONE:
        if role in ("user", "item"):
            raise DataError(f"{key}: the {role} column is required; pass a column name or 0-based index")
        return None
    if isinstance(ref, int):
        if ref >= n_fields:
            raise DataError(f"{path}: {key}={ref} is out of range: the file has {n_fields} columns "
                            f"({listing}), indices start at 0")
        return ref
    if ref != AUTO:
        if header is None:
            raise DataError(f"{path}: {key}={ref!r} names a column, but the file has no header; "
                            f"pass a 0-based index (0..{n_fields - 1}) or --set csv.header=true")
        matches = [i for i, name in enumerate(header) if name == ref] or \
                  [i for i, name in enumerate(header) if _normal(name) == _normal(ref)]
        if not matches:
            raise DataError(f"{path} line 1: {key}: no column {ref!r}; available columns: {listing}")
        if len(matches) > 1:
            raise DataError(f"{path} line 1: {key}: column {ref!r} appears {len(matches)} times")
        return matches[0]
    return _auto_column(path, role, header, n_fields, data, listing)


def _auto_column(path: Path, role: str, header: tuple[str, ...] | None, n_fields: int, data: list[list[str]],
                 listing: str) -> int | None:
    if header is not None:
        aliases = {_normal(a) for a in ALIASES[role]}
        hits = [i for i, name in enumerate(header) if _normal(name) in aliases]
        if hits:
            return hits[0]
        if role in ("user", "item"):
            raise DataError(f"{path} line 1: no {role} column found among: {listing}; "
                            f"pass --set csv.{role}-col=<name or 0-based index>")
        return None
    if role == "user":
        return 0
    if role == "item":
        return 1
    if role in ("rating", "timestamp") and _movielens_layout(data, n_fields):
        return 2 if role == "rating" else 3
    return None


def _movielens_layout(data: list[list[str]], n_fields: int) -> bool:
    """Headerless ``user item rating timestamp`` (``u.data``, ``ratings.dat``): 4 columns, the
    last integer Unix seconds (after 1973), the third a small number."""
    if n_fields != 4 or not data:
        return False
    try:
        stamps = [float(r[3]) for r in data]
        ratings = [float(r[2]) for r in data]
    except (ValueError, IndexError):
        return False
    return all(s >= _UNIX_1973 and s == int(s) for s in stamps) and all(0 <= v <= 100 for v in ratings)


def _report_unused(path: Path, names: tuple[str, ...], used: dict[str, int], header: bool) -> None:
    """Warn once about columns the run ignores, naming the key that would read them."""
    unused = [i for i in range(len(names)) if i not in used.values()]
    if not unused:
        return
    shown = ", ".join(repr(names[i]) if header else str(i) for i in unused)
    ref = names[unused[0]] if header else str(unused[0])
    logger.warning("%s: column(s) %s not used; pass --set csv.weight-col=%s to weigh rows by counts, "
                   "csv.rating-col=%s for ratings or csv.timestamp-col=%s for times", path, shown, ref, ref, ref)


# --------------------------------------------------------------------------- reading


@dataclass
class _Chunk:
    lines: list[int]
    users: list[int]
    items: list[int]
    texts: dict[str, list[str]]


def _read_rows(path: Path, sep: str, n_fields: int, header: bool, used: dict[str, int], options: CsvOptions,
               rating_scale: tuple[float, float] | None, encoding: str) -> Interactions:
    users_map: dict[str, int] = {}
    items_map: dict[str, int] = {}
    parts: list[tuple[np.ndarray, ...]] = []
    with open(path, encoding=encoding, newline="") as f:
        try:
            for chunk in _chunks(path, f, sep, n_fields, header, used, users_map, items_map):
                parts.append(_convert(path, chunk, used, options, rating_scale))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid {encoding} text ({exc.reason})") from None
        except csv.Error as exc:
            raise DataError(f"{path}: {exc}") from None
    if not parts:
        raise DataError(f"{path}: empty file (no data rows after the header)")
    users, items, ratings, stamps, weights = (np.concatenate(col) for col in zip(*parts, strict=True))
    inter = Interactions.build(users, items, ratings if "rating" in used else None, stamps,
                               user_ids=IdMap(tuple(users_map)), item_ids=IdMap(tuple(items_map)))
    return inter.with_weights(weights)


def _chunks(path: Path, f: TextIO, sep: str, n_fields: int, header: bool, used: dict[str, int],
            users_map: dict[str, int], items_map: dict[str, int]) -> Iterator[_Chunk]:
    ui, ii = used["user"], used["item"]
    extra = {role: i for role, i in used.items() if role not in ("user", "item")}
    chunk = _Chunk([], [], [], {role: [] for role in extra})
    rows = _split_lines(f, sep)
    if header:
        next(rows, None)
    for line_no, row in rows:
        if len(row) != n_fields:
            raise DataError(f"{path} line {line_no}: expected {n_fields} fields separated by {sep!r}, "
                            f"found {len(row)}")
        user, item = row[ui].strip(), row[ii].strip()
        if not user or not item:
            role, col = ("user", ui) if not user else ("item", ii)
            raise DataError(f"{path} line {line_no}, column {col}: empty {role} id")
        chunk.lines.append(line_no)
        chunk.users.append(users_map.setdefault(user, len(users_map)))
        chunk.items.append(items_map.setdefault(item, len(items_map)))
        for role, i in extra.items():
            chunk.texts[role].append(row[i])
        if len(chunk.lines) >= _CHUNK_ROWS:
            yield chunk
            chunk = _Chunk([], [], [], {role: [] for role in extra})
    if chunk.lines:
        yield chunk


def _convert(path: Path, chunk: _Chunk, used: dict[str, int], options: CsvOptions,
             rating_scale: tuple[float, float] | None) -> tuple[np.ndarray, ...]:
    n = len(chunk.lines)
    lines = np.asarray(chunk.lines, dtype=np.int64)
    ratings = np.ones(n, np.float32)
    if "rating" in used:
        values = _floats(path, chunk.texts["rating"], lines, f"rating (column {used['rating']})")
        _check_finite(path, values, lines, f"rating (column {used['rating']})")
        if rating_scale is not None:
            check_ratings(path, values, lines, rating_scale)
        ratings = values.astype(np.float32)
    stamps = np.zeros(n, np.int64)
    if "timestamp" in used:
        stamps = _timestamps(path, chunk.texts["timestamp"], lines)
    weights = np.ones(n, np.float32)
    if "weight" in used:
        what = f"count (column {used['weight']})"
        counts = _floats(path, chunk.texts["weight"], lines, what)
        _check_finite(path, counts, lines, what)
        if (counts < 0).any():
            bad = int(np.flatnonzero(counts < 0)[0])
            raise DataError(f"{path} line {lines[bad]}: {what} {float(counts[bad])!r} is negative; "
                            "confidence weights need counts >= 0")
        weights = (1.0 + options.weight_alpha * np.log1p(counts)).astype(np.float32)
    return (np.asarray(chunk.users, np.int64), np.asarray(chunk.items, np.int64), ratings, stamps, weights)


def _check_finite(path: Path, values: np.ndarray, lines: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"{path} line {lines[bad]}: {what} {float(values[bad])!r} is not finite")


__all__ = ["ALIASES", "DATA_SUFFIXES", "UserFile", "data_files", "read_user_file", "resolve_data_file",
           "train_test_files"]
