"""Delimited interaction files: a fast numeric reader and a generic CSV/TSV loader.

Two readers live here because every text loader needs one of them:

* :func:`iter_numeric_blocks` parses all-numeric files (MovieLens ``u.data``,
  ``ratings.dat``, ``ratings.csv``) block by block with vectorised numpy, so a
  20M-row file streams in bounded memory and 100k rows parse in tens of
  milliseconds. Only when a block fails the vectorised checks is it re-read line
  by line, which either finds the first bad line (for the error message) or
  parses harmless irregularities such as spaces around fields.
* :func:`load_csv` reads a headed CSV/TSV with named columns and string ids
  through the :mod:`csv` module (quoting, any id format).

Every rejection is a :class:`~fedrec.errors.DataError` naming the file, the
1-based line number and the rule broken, because a silently skipped or
misparsed row corrupts every metric computed downstream.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedrec.data.interactions import IdMap, Interactions
from fedrec.errors import DataError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
"""Bytes per parsed block: bounds transient memory while keeping numpy calls large."""

CSV_CHUNK_ROWS = 200_000
"""Rows per converted block in :func:`load_csv`."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NEWLINE, _CR, _SPACE, _TAB = 10, 13, 32, 9


@dataclass(frozen=True)
class NumericBlock:
    """Rows of one parsed block of a numeric file.

    Attributes
    ----------
    lines:
        ``int64`` 1-based line number of each row, so any later check
        (ranges, unknown ids) can still point at the offending line.
    values:
        ``float64`` array of shape ``(rows, n_fields)``.
    """

    lines: np.ndarray
    values: np.ndarray


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading; a missing or unreadable file is a ``DataError``."""
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller owns the handle
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror or exc}") from None


def read_text(path: Path, encoding: str) -> str:
    """Whole file as text; ``DataError`` when missing, unreadable or empty."""
    with open_binary(path) as f:
        raw = f.read()
    if not raw.strip():
        raise DataError(f"{path}: empty file (no data rows)")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line_no = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path} line {line_no}: not valid {encoding} text ({exc.reason})"
        ) from None


def iter_numeric_blocks(
    path: Path,
    *,
    delimiter: str,
    n_fields: int,
    skip_lines: int = 0,
    chunk_bytes: int | None = None,
) -> Iterator[NumericBlock]:
    """Stream an all-numeric delimited file as blocks of ``float64`` rows.

    Blank lines are skipped; a line with the wrong number of fields or a
    non-numeric field raises ``DataError`` with its line number. Values are
    returned as floats (exact for integers below 2**53, which covers ids and
    Unix timestamps); callers check integrality and ranges with
    :func:`check_integer` and :func:`check_ratings`.

    Parameters
    ----------
    path:
        File to read (bytes; numeric files are ASCII).
    delimiter:
        Field separator, e.g. ``"\\t"``, ``"::"`` or ``","``.
    n_fields:
        Exact number of fields every non-blank line must have.
    skip_lines:
        Leading lines (a header) not to parse.
    chunk_bytes:
        Approximate block size (default :data:`CHUNK_BYTES`); a block always
        ends at a line break.
    """
    path = Path(path)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    delim = delimiter.encode("ascii")
    n_rows = 0
    with open_binary(path) as f:
        for _ in range(skip_lines):
            f.readline()
        line_no = skip_lines
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += f.readline()
            if not block.endswith(b"\n"):
                block += b"\n"
            parsed = _parse_block(path, block, delim, n_fields, line_no + 1)
            line_no += block.count(b"\n")
            if len(parsed.lines):
                n_rows += len(parsed.lines)
                yield parsed
    if n_rows == 0:
        what = "no data rows after the header" if skip_lines else "no data rows"
        raise DataError(f"{path}: empty file ({what})")


def _parse_block(
    path: Path, block: bytes, delim: bytes, n_fields: int, first_line: int
) -> NumericBlock:
    """Vectorised parse of complete lines; falls back to :func:`_parse_lines`."""
    arr = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(arr == _NEWLINE)
    starts = np.concatenate(([0], ends[:-1] + 1))
    has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == _CR)
    nonblank = (ends - starts - has_cr) > 0
    lines = first_line + np.flatnonzero(nonblank).astype(np.int64)
    if _fast_path_ok(arr, ends, nonblank, has_cr, delim, n_fields):
        try:
            values = np.fromstring(block.replace(delim, b" "), sep=" ")
        except ValueError:
            values = None
        if values is not None and values.size == len(lines) * n_fields:
            return NumericBlock(lines, values.reshape(len(lines), n_fields))
    return _parse_lines(path, block, delim, n_fields, first_line)


def _fast_path_ok(
    arr: np.ndarray,
    ends: np.ndarray,
    nonblank: np.ndarray,
    has_cr: np.ndarray,
    delim: bytes,
    n_fields: int,
) -> bool:
    """True when every non-blank line has exactly ``n_fields - 1`` delimiters and no
    other whitespace, so whitespace-separated parsing cannot shift fields between lines."""
    others = arr == _SPACE
    if delim != b"\t":
        others |= arr == _TAB
    if others.any() or np.count_nonzero(arr == _CR) != np.count_nonzero(has_cr):
        return False
    hits = arr == delim[0]
    if len(delim) > 1:
        hits = hits[: len(arr) - len(delim) + 1].copy()
        for j in range(1, len(delim)):
            hits &= arr[j : len(arr) - len(delim) + 1 + j] == delim[j]
    per_line = np.bincount(np.searchsorted(ends, np.flatnonzero(hits)), minlength=len(ends))
    return bool(np.all(per_line[nonblank] == n_fields - 1) and np.all(per_line[~nonblank] == 0))


def _parse_lines(
    path: Path, block: bytes, delim: bytes, n_fields: int, first_line: int
) -> NumericBlock:
    """Line-by-line parse: exact error location, tolerant of spaces around fields."""
    sep = delim.decode("ascii")
    rows: list[list[float]] = []
    lines: list[int] = []
    for offset, line in enumerate(block.decode("latin-1").split("\n")[:-1]):
        line = line.rstrip("\r")
        if not line:
            continue
        line_no = first_line + offset
        fields = line.split(sep)
        if len(fields) != n_fields:
            raise DataError(
                f"{path} line {line_no}: expected {n_fields} fields separated by "
                f"{sep!r}, found {len(fields)}"
            )
        row = []
        for col, field in enumerate(fields, start=1):
            token = field.strip()
            if not _NUMBER.fullmatch(token):
                raise DataError(f"{path} line {line_no}: field {col} {token!r} is not a number")
            row.append(float(token))
        rows.append(row)
        lines.append(line_no)
    values = np.array(rows, dtype=np.float64).reshape(len(rows), n_fields)
    return NumericBlock(np.array(lines, dtype=np.int64), values)


def check_integer(path: Path, values: np.ndarray, lines: np.ndarray, what: str) -> np.ndarray:
    """``values`` as ``int64``; ``DataError`` at the first non-integral or non-finite one."""
    ok = np.isfinite(values) & (values == np.floor(values))
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise DataError(
            f"{path} line {lines[bad]}: {what} {float(values[bad])!r} is not an integer"
        )
    return values.astype(np.int64)


def check_ratings(
    path: Path,
    ratings: np.ndarray,
    lines: np.ndarray,
    scale: tuple[float, float],
    step: float | None = None,
) -> None:
    """Reject ratings outside ``[low, high]`` or off the ``step`` grid (half stars).

    Why: an out-of-scale rating is a corrupt row, and clipping it silently would
    bias both training and RMSE.
    """
    low, high = scale
    ok = (ratings >= low) & (ratings <= high)  # NaN compares False
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise DataError(
            f"{path} line {lines[bad]}: rating {float(ratings[bad])!r} outside scale "
            f"[{low:g}, {high:g}]"
        )
    if step is not None:
        steps = (ratings - low) / step
        on_grid = np.abs(steps - np.round(steps)) < 1e-6
        if not on_grid.all():
            bad = int(np.flatnonzero(~on_grid)[0])
            raise DataError(
                f"{path} line {lines[bad]}: rating {float(ratings[bad])!r} is not a "
                f"multiple of {step:g} from {low:g}"
            )


def map_known_ids(
    path: Path, external: np.ndarray, known: np.ndarray, lines: np.ndarray, what: str, source: str
) -> np.ndarray:
    """Dense indices of ``external`` in the sorted id array ``known``.

    Why: MovieLens index spaces come from the metadata files so all splits of a
    dataset agree; a rating for an id the metadata lacks is a data error.
    """
    pos = np.searchsorted(known, external)
    found = pos < len(known)
    found[found] = known[pos[found]] == external[found]
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"{path} line {lines[bad]}: {what} {int(external[bad])} is not listed in {source}"
        )
    return pos.astype(np.int64)


# --------------------------------------------------------------------------- generic CSV


def load_csv(
    path: str | Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    delimiter: str | None = None,
    rating_scale: tuple[float, float] | None = None,
    encoding: str = "utf-8-sig",
) -> Interactions:
    """Load a headed CSV/TSV of interactions with named columns.

    Users and items may be any strings; their dense indices follow first
    appearance in the file, so reloading the same file gives the same indices.

    Parameters
    ----------
    path:
        The file. Its header row names the columns.
    user_col, item_col:
        Required id columns.
    rating_col:
        Explicit rating column; ``None`` means implicit feedback (ratings 1.0).
    timestamp_col:
        Integer seconds or ISO-8601 date-times (naive ones read as UTC);
        ``None`` gives timestamp 0 everywhere.
    delimiter:
        ``None`` detects it: ``.tsv``/``.tab`` → tab, ``.csv`` → comma,
        otherwise the most frequent of tab, comma, semicolon, pipe in the header.
    rating_scale:
        ``(low, high)``; ratings outside it are rejected.
    encoding:
        Text encoding (a UTF-8 byte-order mark is dropped by default).

    Raises
    ------
    DataError
        Missing/empty file, absent column (the message lists the available
        ones), wrong field count, non-numeric rating or timestamp, rating
        outside ``rating_scale``.
    """
    path = Path(path)
    if rating_scale is not None and not rating_scale[0] < rating_scale[1]:
        raise DataError(f"{path}: rating_scale {rating_scale} must be (low, high) with low < high")
    with open_binary(path) as raw:
        head = raw.readline()
    if not head.strip():
        raise DataError(f"{path}: empty file (no header row)")
    sep = delimiter or _sniff_delimiter(path, head.decode(encoding, errors="replace"))
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": timestamp_col}
    users_map: dict[str, int] = {}
    items_map: dict[str, int] = {}
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        try:
            header = [name.strip() for name in next(reader)]
            cols = _column_positions(path, header, wanted)
            parts = [
                _convert_chunk(path, chunk, cols, rating_scale)
                for chunk in _csv_chunks(path, reader, len(header), cols, users_map, items_map)
            ]
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} line {reader.line_num + 1}: not valid {encoding} text ({exc.reason}); "
                "pass encoding="
            ) from None
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: {exc}") from None
    if not parts:
        raise DataError(f"{path}: empty file (no data rows after the header)")
    users, items, ratings, timestamps = (np.concatenate(col) for col in zip(*parts, strict=True))
    inter = Interactions.build(
        users,
        items,
        None if rating_col is None else ratings,
        timestamps,
        user_ids=IdMap(tuple(users_map)),
        item_ids=IdMap(tuple(items_map)),
    )
    logger.info(
        "loaded %s: %d rows, %d users, %d items", path, len(inter), inter.n_users, inter.n_items
    )
    return inter


def _sniff_delimiter(path: Path, header: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    counts = {sep: header.count(sep) for sep in ("\t", ",", ";", "|")}
    best = max(counts, key=lambda s: counts[s])
    if counts[best] == 0:
        raise DataError(
            f"{path} line 1: cannot detect the delimiter (no tab, comma, semicolon or "
            "pipe in the header); pass delimiter="
        )
    return best


def _column_positions(
    path: Path, header: Sequence[str], wanted: dict[str, str | None]
) -> dict[str, int]:
    """Position of each requested column; ``DataError`` naming absent or repeated ones."""
    available = ", ".join(header)
    missing = [name for name in wanted.values() if name is not None and name not in header]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise DataError(f"{path} line 1: unknown column {names}; available columns: {available}")
    positions = {}
    for role, name in wanted.items():
        if name is None:
            continue
        if header.count(name) > 1:
            raise DataError(f"{path} line 1: column {name!r} appears {header.count(name)} times")
        positions[role] = header.index(name)
    return positions


@dataclass
class _CsvChunk:
    lines: list[int]
    users: list[int]
    items: list[int]
    ratings: list[str]
    timestamps: list[str]


def _csv_chunks(
    path: Path,
    reader: Iterator[list[str]],
    n_fields: int,
    cols: dict[str, int],
    users_map: dict[str, int],
    items_map: dict[str, int],
) -> Iterator[_CsvChunk]:
    """Rows grouped in chunks, ids mapped to dense first-seen indices on the way."""
    ui, ii, ri, ti = cols["user"], cols["item"], cols.get("rating"), cols.get("timestamp")
    chunk = _CsvChunk([], [], [], [], [])
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        line_no = reader.line_num  # type: ignore[attr-defined]  # csv.reader objects have line_num; typeshed's Iterator does not
        if len(row) != n_fields:
            raise DataError(f"{path} line {line_no}: expected {n_fields} fields, found {len(row)}")
        user, item = row[ui].strip(), row[ii].strip()
        if not user or not item:
            role = "user" if not user else "item"
            raise DataError(f"{path} line {line_no}: empty {role} id")
        chunk.lines.append(line_no)
        chunk.users.append(users_map.setdefault(user, len(users_map)))
        chunk.items.append(items_map.setdefault(item, len(items_map)))
        if ri is not None:
            chunk.ratings.append(row[ri])
        if ti is not None:
            chunk.timestamps.append(row[ti])
        if len(chunk.lines) >= CSV_CHUNK_ROWS:
            yield chunk
            chunk = _CsvChunk([], [], [], [], [])
    if chunk.lines:
        yield chunk


def _convert_chunk(
    path: Path, chunk: _CsvChunk, cols: dict[str, int], rating_scale: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = len(chunk.lines)
    lines = np.asarray(chunk.lines, dtype=np.int64)
    ratings = np.ones(n, np.float32)
    if "rating" in cols:
        values = _floats(path, chunk.ratings, lines, "rating")
        if rating_scale is not None:
            check_ratings(path, values, lines, rating_scale)
        elif not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(
                f"{path} line {lines[bad]}: rating {float(values[bad])!r} is not finite"
            )
        ratings = values.astype(np.float32)
    timestamps = np.zeros(n, np.int64)
    if "timestamp" in cols:
        timestamps = _timestamps(path, chunk.timestamps, lines)
    return (
        np.asarray(chunk.users, np.int64),
        np.asarray(chunk.items, np.int64),
        ratings,
        timestamps,
    )


def _floats(path: Path, texts: list[str], lines: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.array(texts, dtype=np.float64)
    except ValueError:
        pass
    for text, line_no in zip(texts, lines, strict=True):
        if not _NUMBER.fullmatch(text.strip()):
            raise DataError(f"{path} line {line_no}: {what} {text!r} is not a number")
    raise DataError(f"{path}: {what} column could not be parsed")  # pragma: no cover


def _timestamps(path: Path, texts: list[str], lines: np.ndarray) -> np.ndarray:
    """Integer seconds, or ISO-8601 date-times converted to Unix seconds."""
    try:
        values = np.array(texts, dtype=np.float64)
    except ValueError:
        return np.array(
            [_parse_time(path, t, int(n)) for t, n in zip(texts, lines, strict=True)],
            dtype=np.int64,
        )
    return check_integer(path, values, lines, "timestamp")


def _parse_time(path: Path, text: str, line_no: int) -> int:
    token = text.strip()
    if _NUMBER.fullmatch(token):
        value = float(token)
        if value != int(value):
            raise DataError(f"{path} line {line_no}: timestamp {token!r} is not an integer")
        return int(value)
    try:
        moment = datetime.fromisoformat(token)
    except ValueError:
        raise DataError(
            f"{path} line {line_no}: timestamp {token!r} is neither integer seconds "
            "nor an ISO-8601 date-time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
