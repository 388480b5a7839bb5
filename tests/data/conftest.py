"""Shared fixtures for the data-layer tests: tiny MovieLens-shaped folders and tables."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

ML100K_USERS = "2|53|F|other|94043\n1|24|M|technician|85711\n3|23|M|writer|32067\n"
"""Three users, listed out of order: dense index must follow sorted id (1, 2, 3)."""


def _item_line(item_id: int, title: str, genres: tuple[int, ...]) -> str:
    flags = ["1" if g in genres else "0" for g in range(19)]
    return f"{item_id}|{title}|01-Jan-1995||http://example.org/{item_id}|" + "|".join(flags)


ML100K_ITEMS = (
    "\n".join(
        [
            _item_line(10, "Ten (1995)", (1,)),
            _item_line(2, "GoldenEye (1995)", (1, 2, 16)),
            _item_line(1, "Toy Story (1995)", (3, 4, 5)),
            _item_line(7, "Caf\xe9 (1996)", (8,)),
        ]
    )
    + "\n"
)
"""Item ids 10, 2, 1, 7 → indices 3, 1, 0, 2 (latin-1 title on purpose)."""

ML100K_DATA = "1\t2\t3\t881250949\n2\t1\t5\t891717742\n3\t10\t1\t878887116\n1\t7\t4\t881250950\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def write_file() -> Callable[..., Path]:
    """``write_file(path, text, encoding="utf-8")``: create parents, write bytes, return path."""
    return write


@pytest.fixture
def ml100k_root(tmp_path: Path) -> Path:
    """A data root containing a tiny ``ml-100k/`` with u.data, u.user, u.item and fold 1."""
    folder = tmp_path / "ml-100k"
    write(folder / "u.user", ML100K_USERS)
    write(folder / "u.item", ML100K_ITEMS, "latin-1")
    write(folder / "u.data", ML100K_DATA)
    write(folder / "u1.base", "1\t2\t3\t881250949\n2\t1\t5\t891717742\n")
    write(folder / "u1.test", "3\t10\t1\t878887116\n")
    write(folder / "ua.base", "1\t2\t3\t881250949\n")
    write(folder / "ua.test", "2\t1\t5\t891717742\n")
    return tmp_path


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-1m"
    write(
        folder / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "5::Father of the Bride Part II (1995)::Comedy\n"
        "3::Caf\xe9 (1995)::Comedy|Romance\n",
        "latin-1",
    )
    write(folder / "users.dat", "1::F::1::10::48067\n6::M::56::16::70072\n")
    write(folder / "ratings.dat", "1::1::5::978300760\n6::3::3::978302109\n1::5::1::978301968\n")
    return folder


@pytest.fixture
def ml_latest_small_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    write(
        folder / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "4,Waiting to Exhale (1995),(no genres listed)\n",
    )
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,4.5,964981247\n"
        "5,4,0.5,964982224\n",
    )
    return folder


@pytest.fixture
def real_data_dir() -> Path:
    """``$FEDREC_DATA_DIR`` when it holds ``ml-100k/``; otherwise the test is skipped."""
    root = os.environ.get("FEDREC_DATA_DIR")
    if not root:
        pytest.skip("FEDREC_DATA_DIR is not set; real MovieLens-100K tests need it")
    if not (Path(root) / "ml-100k" / "u.data").is_file():
        pytest.skip(f"FEDREC_DATA_DIR={root} has no ml-100k/u.data")
    return Path(root)
