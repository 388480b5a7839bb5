"""The peer libraries the benchmarks compare against: Surprise's SVD and implicit's ALS.

Both are dev-only (``pip install -e .[peers]``); :func:`missing` says which is
absent so a benchmark can say so instead of failing. Each wrapper fits on a
fedrec :class:`~fedrec.data.interactions.Interactions` split, times the fit
alone (data conversion excluded, as for fedrec's trainers) with one thread,
and returns the scoring functions :func:`fedrec.metrics.evaluate.evaluate`
takes, so every library is scored by the same code.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.interactions import Interactions

PEERS = {"surprise": "scikit-surprise", "implicit": "implicit"}


@dataclass(frozen=True)
class PeerFit:
    """A fitted peer: fit seconds and fedrec-style scoring functions."""

    seconds: float
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
    score_block: Callable[[np.ndarray], np.ndarray]


def missing() -> list[str]:
    """PyPI names of the peers that are not installed."""
    return [pkg for mod, pkg in PEERS.items() if importlib.util.find_spec(mod) is None]


def single_thread() -> None:
    """One BLAS/OpenMP thread in this process (set before numpy loads its BLAS, or via threadpoolctl)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if importlib.util.find_spec("threadpoolctl") is not None:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1)


def surprise_svd(train: Interactions, scale: tuple[float, float], *, seed: int = 0, **params: float) -> PeerFit:
    """Surprise's ``SVD`` (defaults unless ``params``), trained through its own file loader."""
    from surprise import SVD, Dataset, Reader

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.tsv"
        path.write_text("".join(f"{u}\t{i}\t{r}\n" for u, i, r in
                                zip(train.users.tolist(), train.items.tolist(), train.ratings.tolist(), strict=True)))
        reader = Reader(line_format="user item rating", sep="\t", rating_scale=scale)
        trainset = Dataset.load_from_file(str(path), reader).build_full_trainset()
    algo = SVD(random_state=seed, **params)  # type: ignore[arg-type]
    start = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - start

    def predict(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.array([algo.predict(str(u), str(i)).est for u, i in zip(users, items, strict=True)])

    def no_ranking(users: np.ndarray) -> np.ndarray:
        raise NotImplementedError("SVD is compared on E1 only")

    return PeerFit(seconds, predict, no_ranking)


def implicit_als(train: Interactions, *, factors: int, regularization: float, alpha: float, iterations: int,
                 weights: np.ndarray | None = None, seed: int = 0) -> PeerFit:
    """implicit's CPU ``AlternatingLeastSquares`` (conjugate gradient, one thread) on the user x item matrix.

    implicit 0.7 takes an interaction's confidence to be ``alpha * value``
    (not ``1 + alpha * value``), so the matrix holds ``1 + alpha * w`` and
    implicit's own ``alpha`` is 1: the confidence of fedrec's ``"wrmf"`` with
    ``model.confidence = alpha`` and the same weights ``w`` (default 1), hence
    the same objective.
    """
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    w = np.ones(len(train)) if weights is None else np.asarray(weights, np.float64)
    matrix = sp.csr_matrix(((1.0 + alpha * w).astype(np.float32), (train.users, train.items)),
                           shape=(train.n_users, train.n_items))
    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=1.0,
                                    iterations=iterations, num_threads=1, random_state=seed,
                                    calculate_training_loss=False)
    start = time.perf_counter()
    model.fit(matrix, show_progress=False)
    seconds = time.perf_counter() - start
    users_f, items_f = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return PeerFit(seconds, lambda u, i: np.einsum("nd,nd->n", users_f[u], items_f[i]),
                   lambda u: users_f[u] @ items_f.T)
