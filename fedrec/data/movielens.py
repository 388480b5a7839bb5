"""MovieLens loaders: 100K, 1M and the CSV family (20M, 25M, latest, latest-small).

Index spaces come from the metadata files (``u.user``/``u.item``,
``users.dat``/``movies.dat``, ``movies.csv``) in sorted external-id order, so
``u.data`` and every official fold of a dataset share one index space and a
model trained on one split can be scored on another. Ratings are validated
against each release's declared scale (whole stars 1..5; half stars 0.5..5 for
the CSV releases).

``data_dir`` may be the folder holding ``ml-100k/`` (and friends) or the
dataset folder itself. The files are never copied anywhere.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedrec.data.csvfile import (
    check_integer,
    check_ratings,
    iter_numeric_blocks,
    map_known_ids,
    open_binary,
    read_text,
)
from fedrec.data.interactions import Dataset, IdMap, Interactions
from fedrec.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MOVIELENS_NAMES: tuple[str, ...] = (
    "ml-100k",
    "ml-1m",
    "ml-20m",
    "ml-25m",
    "ml-latest",
    "ml-latest-small",
)
"""Every MovieLens release this module reads."""

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""Genre columns of ``u.item`` in file order (as listed in ``u.genre``)."""

MOVIELENS_GENRES: tuple[str, ...] = (*ML100K_GENRES[1:], "IMAX")
"""Canonical genre order for ``movies.dat``/``movies.csv``; unlisted genres follow, sorted."""

_NO_GENRES = "(no genres listed)"
_MARKER = {"ml-100k": "u.data", "ml-1m": "ratings.dat"}
_FOLDS: dict[int | str, str] = {
    **{i: f"u{i}" for i in range(1, 6)},
    **{str(i): f"u{i}" for i in range(1, 6)},
    "a": "ua",
    "b": "ub",
}


def resolve_movielens_dir(data_dir: str | Path, name: str) -> Path:
    """The folder holding ``name``'s files: ``data_dir/name`` or ``data_dir`` itself.

    Why both: users point ``--data-dir`` either at a shared data root or at the
    unpacked release, and both should just work.
    """
    if name not in MOVIELENS_NAMES:
        raise ConfigError(
            f"unknown MovieLens dataset {name!r}; valid: {', '.join(MOVIELENS_NAMES)}"
        )
    base = Path(data_dir).expanduser()
    marker = _MARKER.get(name, "ratings.csv")
    for folder in (base / name, base):
        if (folder / marker).is_file():
            return folder
    raise DataError(
        f"{name}: {marker} not found in {base / name} or {base} "
        f"(point data_dir at the folder containing {name}/)"
    )


# --------------------------------------------------------------------------- ML-100K


def load_ml100k(data_dir: str | Path) -> Interactions:
    """All 100,000 ratings of ``u.data`` over the ``u.user``/``u.item`` index space."""
    folder = resolve_movielens_dir(data_dir, "ml-100k")
    users, items = _ml100k_id_maps(folder)
    return _read_ml100k_ratings(folder / "u.data", users, items)


def load_ml100k_fold(data_dir: str | Path, fold: int | str) -> Dataset:
    """An official split: ``u{fold}.base``/``u{fold}.test`` (1..5) or ``ua``/``ub`` ("a"/"b").

    Train and test share the index space of ``u.user``/``u.item``, identical to
    :func:`load_ml100k`'s.
    """
    key = fold.lower() if isinstance(fold, str) else fold
    prefix = None if isinstance(fold, bool) else _FOLDS.get(key)
    if prefix is None:
        raise ConfigError(f"ml-100k fold {fold!r} invalid; valid folds: 1, 2, 3, 4, 5, 'a', 'b'")
    folder = resolve_movielens_dir(data_dir, "ml-100k")
    users, items = _ml100k_id_maps(folder)
    train = _read_ml100k_ratings(folder / f"{prefix}.base", users, items)
    test = _read_ml100k_ratings(folder / f"{prefix}.test", users, items)
    return Dataset(name="ml-100k", train=train, test=test, rating_scale=(1.0, 5.0))


def load_ml100k_genres(data_dir: str | Path) -> np.ndarray:
    """``(n_items, 19)`` float32 0/1 genre matrix from ``u.item``, rows in index order."""
    folder = resolve_movielens_dir(data_dir, "ml-100k")
    _, genres = _read_ml100k_items(folder / "u.item")
    return genres


def _ml100k_id_maps(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    users = _read_ml100k_users(folder / "u.user")
    items, _ = _read_ml100k_items(folder / "u.item")
    return users, items


def _read_ml100k_users(path: Path) -> np.ndarray:
    """Sorted user ids of ``u.user`` (``id|age|gender|occupation|zip``)."""
    rows = _text_lines(path)
    ids = [_int_field(path, n, line.split("|"), 0, "user id", min_fields=5) for n, line in rows]
    return _sorted_unique(path, ids, [n for n, _ in rows], "user id")


def _read_ml100k_items(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Sorted item ids of ``u.item`` and their genre flags (last 19 fields)."""
    n_genres = len(ML100K_GENRES)
    ids: list[int] = []
    lines: list[int] = []
    flags: list[list[float]] = []
    for n, line in _text_lines(path):
        lines.append(n)
        fields = line.split("|")
        ids.append(_int_field(path, n, fields, 0, "item id", min_fields=5 + n_genres))
        row = fields[-n_genres:]
        if any(flag.strip() not in ("0", "1") for flag in row):
            raise DataError(f"{path} line {n}: genre flags must be 0 or 1, found {'|'.join(row)!r}")
        flags.append([float(flag) for flag in row])
    sorted_ids = _sorted_unique(path, ids, lines, "item id")
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    return sorted_ids, np.asarray(flags, dtype=np.float32)[order]


def _read_ml100k_ratings(path: Path, users: np.ndarray, items: np.ndarray) -> Interactions:
    """A ``user<TAB>item<TAB>rating<TAB>timestamp`` file (u.data, u1.base, ...)."""
    return _read_ratings(
        path,
        delimiter="\t",
        skip_lines=0,
        columns=(0, 1, 2, 3),
        scale=(1.0, 5.0),
        step=1.0,
        users=users,
        items=items,
        sources=("u.user", "u.item"),
    )


# --------------------------------------------------------------------------- ML-1M


def load_ml1m(data_dir: str | Path) -> Interactions:
    """``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) over movies.dat's items.

    Users come from ``users.dat`` when present, else from the ratings.
    """
    folder = resolve_movielens_dir(data_dir, "ml-1m")
    items, _ = (
        _read_movies_dat(folder / "movies.dat")
        if (folder / "movies.dat").is_file()
        else (None, None)
    )
    users = None
    if (folder / "users.dat").is_file():
        path = folder / "users.dat"
        rows = _text_lines(path)
        ids = [
            _int_field(path, n, line.split("::"), 0, "user id", min_fields=2) for n, line in rows
        ]
        users = _sorted_unique(path, ids, [n for n, _ in rows], "user id")
    return _read_ratings(
        folder / "ratings.dat",
        delimiter="::",
        skip_lines=0,
        columns=(0, 1, 2, 3),
        scale=(1.0, 5.0),
        step=1.0,
        users=users,
        items=items,
        sources=("users.dat", "movies.dat"),
    )


def _read_movies_dat(path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Sorted movie ids of ``movies.dat`` (``MovieID::Title::Genres``) and their genres."""
    ids: list[int] = []
    lines: list[int] = []
    genres: list[list[str]] = []
    for n, line in _text_lines(path):
        lines.append(n)
        fields = line.split("::")
        ids.append(_int_field(path, n, fields, 0, "movie id", min_fields=3))
        genres.append(_split_genres(fields[-1]))
    return _sorted_by_id(path, ids, lines, genres)


# --------------------------------------------------------------------------- CSV releases


def load_movielens_csv(data_dir: str | Path, name: str = "ml-20m") -> Interactions:
    """``ratings.csv`` (``userId,movieId,rating,timestamp``, half stars) of the CSV releases.

    Streams the ratings in blocks, so a 25M-row file needs little more than the
    final arrays. Items come from ``movies.csv`` when present, users from the
    ratings (these releases have no user file).
    """
    if name in ("ml-100k", "ml-1m"):
        raise ConfigError(f"{name} is not a CSV release; use load_movielens({name!r}, ...)")
    folder = resolve_movielens_dir(data_dir, name)
    items = (
        _read_movies_csv(folder / "movies.csv")[0] if (folder / "movies.csv").is_file() else None
    )
    path = folder / "ratings.csv"
    columns = _ratings_csv_columns(path)
    return _read_ratings(
        path,
        delimiter=",",
        skip_lines=1,
        columns=columns,
        scale=(0.5, 5.0),
        step=0.5,
        users=None,
        items=items,
        sources=("ratings.csv", "movies.csv"),
    )


def _ratings_csv_columns(path: Path) -> tuple[int, int, int, int]:
    """Positions of userId, movieId, rating, timestamp from the header row."""
    with open_binary(path) as f:
        head = f.readline().decode("utf-8-sig", errors="replace")
    if not head.strip():
        raise DataError(f"{path}: empty file (no header row)")
    header = [h.strip() for h in head.strip().split(",")]
    expected = ("userId", "movieId", "rating", "timestamp")
    missing = [c for c in expected if c not in header]
    if missing:
        raise DataError(
            f"{path} line 1: unknown column {', '.join(map(repr, missing))}; "
            f"available columns: {', '.join(header)}"
        )
    if len(header) != 4:
        raise DataError(
            f"{path} line 1: expected 4 columns {', '.join(expected)}, found {len(header)}"
        )
    u, i, r, t = (header.index(c) for c in expected)
    return u, i, r, t


def _read_movies_csv(path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Sorted movie ids of ``movies.csv`` (``movieId,title,genres``; quoted titles)."""
    reader = csv.reader(io.StringIO(read_text(path, "utf-8-sig")))
    header = [h.strip() for h in next(reader)]
    if "movieId" not in header or "genres" not in header:
        raise DataError(
            f"{path} line 1: expected columns movieId, title, genres; "
            f"available columns: {', '.join(header)}"
        )
    id_col, genre_col = header.index("movieId"), header.index("genres")
    ids: list[int] = []
    lines: list[int] = []
    genres: list[list[str]] = []
    for row in reader:
        if not row:
            continue
        n = reader.line_num
        if len(row) != len(header):
            raise DataError(f"{path} line {n}: expected {len(header)} fields, found {len(row)}")
        lines.append(n)
        ids.append(_int_field(path, n, row, id_col, "movie id", min_fields=len(header)))
        genres.append(_split_genres(row[genre_col]))
    return _sorted_by_id(path, ids, lines, genres)


# --------------------------------------------------------------------------- any release


def load_movielens(name: str, data_dir: str | Path) -> Interactions:
    """All ratings of a MovieLens release by name (see :data:`MOVIELENS_NAMES`)."""
    loaders: dict[str, Callable[[str | Path], Interactions]] = {
        "ml-100k": load_ml100k,
        "ml-1m": load_ml1m,
    }
    if name not in MOVIELENS_NAMES:
        raise ConfigError(
            f"unknown MovieLens dataset {name!r}; valid: {', '.join(MOVIELENS_NAMES)}"
        )
    if name in loaders:
        return loaders[name](data_dir)
    return load_movielens_csv(data_dir, name)


def load_movie_genres(data_dir: str | Path, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(n_items, n_genres)`` float32 0/1 genre matrix and the genre names.

    Rows follow the item index of :func:`load_movielens` for the same release
    (which requires the movies file to be present).
    """
    if name == "ml-100k":
        return load_ml100k_genres(data_dir), ML100K_GENRES
    folder = resolve_movielens_dir(data_dir, name)
    if name == "ml-1m":
        _, genres = _read_movies_dat(folder / "movies.dat")
    else:
        _, genres = _read_movies_csv(folder / "movies.csv")
    seen = {g for row in genres for g in row}
    names = tuple(g for g in MOVIELENS_GENRES if g in seen) + tuple(
        sorted(seen - set(MOVIELENS_GENRES))
    )
    column = {g: j for j, g in enumerate(names)}
    matrix = np.zeros((len(genres), len(names)), dtype=np.float32)
    for i, row in enumerate(genres):
        matrix[i, [column[g] for g in row]] = 1.0
    return matrix, names


# --------------------------------------------------------------------------- shared helpers


def _read_ratings(
    path: Path,
    *,
    delimiter: str,
    skip_lines: int,
    columns: tuple[int, int, int, int],
    scale: tuple[float, float],
    step: float,
    users: np.ndarray | None,
    items: np.ndarray | None,
    sources: tuple[str, str],
) -> Interactions:
    """Stream a numeric ratings file into dense-index arrays.

    ``users``/``items`` are the sorted external ids defining the index space;
    ``None`` builds it from the sorted distinct ids of this file.
    """
    start = time.perf_counter()
    cu, ci, cr, ct = columns
    parts: dict[str, list[np.ndarray]] = {"u": [], "i": [], "r": [], "t": []}
    for block in iter_numeric_blocks(path, delimiter=delimiter, n_fields=4, skip_lines=skip_lines):
        v, lines = block.values, block.lines
        u = check_integer(path, v[:, cu], lines, "user id")
        i = check_integer(path, v[:, ci], lines, "item id")
        check_ratings(path, v[:, cr], lines, scale, step)
        t = check_integer(path, v[:, ct], lines, "timestamp")
        parts["u"].append(
            u if users is None else map_known_ids(path, u, users, lines, "user id", sources[0])
        )
        parts["i"].append(
            i if items is None else map_known_ids(path, i, items, lines, "item id", sources[1])
        )
        parts["r"].append(v[:, cr].astype(np.float32))
        parts["t"].append(t)
    user_idx = _drain(parts["u"])
    if users is None:
        users, user_idx = _dense_ids(user_idx)
    item_idx = _drain(parts["i"])
    if items is None:
        items, item_idx = _dense_ids(item_idx)
    inter = Interactions.build(
        user_idx,
        item_idx,
        _drain(parts["r"]),
        _drain(parts["t"]),
        user_ids=_id_map(users),
        item_ids=_id_map(items),
    )
    logger.info(
        "loaded %s: %d ratings, %d users, %d items in %.2fs",
        path,
        len(inter),
        inter.n_users,
        inter.n_items,
        time.perf_counter() - start,
    )
    return inter


def _dense_ids(external: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ids and each row's index among them.

    MovieLens ids are small non-negative integers, so a presence table of size
    ``max id`` replaces sorting all rows (linear time, no row-sized temporaries).
    """
    if len(external) and external.min() >= 0 and external.max() <= 4 * len(external) + 1_000_000:
        present = np.zeros(int(external.max()) + 1, dtype=bool)
        present[external] = True
        rank = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present).astype(np.int64), rank[external]
    ids, inverse = np.unique(external, return_inverse=True)
    return ids.astype(np.int64), inverse.astype(np.int64).reshape(-1)


def _drain(blocks: list[np.ndarray]) -> np.ndarray:
    """Concatenate and release the blocks, so peak memory stays near the final arrays."""
    out = np.concatenate(blocks)
    blocks.clear()
    return out


def _id_map(sorted_ids: np.ndarray) -> IdMap:
    return IdMap(tuple(map(str, sorted_ids.tolist())))


def _text_lines(path: Path, encoding: str = "latin-1") -> list[tuple[int, str]]:
    """Non-blank lines with 1-based numbers (MovieLens metadata is latin-1)."""
    lines = read_text(path, encoding).split("\n")
    return [(n, line.rstrip("\r")) for n, line in enumerate(lines, start=1) if line.strip()]


def _int_field(
    path: Path, line_no: int, fields: list[str], col: int, what: str, *, min_fields: int
) -> int:
    if len(fields) < min_fields:
        raise DataError(
            f"{path} line {line_no}: expected at least {min_fields} fields, found {len(fields)}"
        )
    token = fields[col].strip()
    if not token.lstrip("+-").isdigit():
        raise DataError(f"{path} line {line_no}: {what} {token!r} is not an integer")
    return int(token)


def _sorted_unique(path: Path, ids: list[int], lines: list[int], what: str) -> np.ndarray:
    """Sorted ids; a repeated id is a data error (it would make the index ambiguous)."""
    seen: dict[int, int] = {}
    for value, line_no in zip(ids, lines, strict=True):
        if value in seen:
            raise DataError(
                f"{path} line {line_no}: {what} {value} already listed on line {seen[value]}"
            )
        seen[value] = line_no
    return np.sort(np.asarray(ids, dtype=np.int64))


def _sorted_by_id(
    path: Path, ids: list[int], lines: list[int], genres: list[list[str]]
) -> tuple[np.ndarray, list[list[str]]]:
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    return _sorted_unique(path, ids, lines, "movie id"), [genres[j] for j in order]


def _split_genres(field: str) -> list[str]:
    names = [g.strip() for g in field.strip().split("|") if g.strip()]
    return [g for g in names if g != _NO_GENRES]


def load_ml100k_titles(data_dir: str | Path) -> list[str]:
    """Titles of ``u.item`` in item-index order (the index space of :func:`load_ml100k`)."""
    folder = resolve_movielens_dir(data_dir, "ml-100k")
    ids, _ = _read_ml100k_items(folder / "u.item")
    titles: dict[int, str] = {}
    for n, line in _text_lines(folder / "u.item"):
        fields = line.split("|")
        titles[_int_field(folder / "u.item", n, fields, 0, "item id", min_fields=2)] = fields[1]
    return [titles[int(i)] for i in ids]
