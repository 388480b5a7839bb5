"""Top-K items for one user over the global table, with seen items excluded and allow/deny filters.

The score of item ``i`` is the model's prediction ``mu + b_u + b_i + q_i . p_u``.
Exact scoring (one matrix-vector product and ``argpartition``) is the default
and costs a few microseconds per thousand items; above ``ann_threshold`` items
an approximate index (:mod:`fedrec.recommend.ann`) proposes candidates that are
then re-scored exactly. The index is built once per model: a new model means a
new :class:`TopK`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fedrec.errors import ModelError
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.recommend.ann import AnnIndex, build_index

log = logging.getLogger(__name__)

#: Catalogues at least this large get an approximate index (if one is installed).
ANN_THRESHOLD = 50_000
_NO = np.float32(-np.inf)


@dataclass(frozen=True)
class Recommendation:
    """Items best first, with their predicted scores."""

    items: np.ndarray
    scores: np.ndarray


def exact_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, best first (``scores`` may hold ``-inf`` to skip)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, np.int64)
    top = scores.argpartition(len(scores) - k)[len(scores) - k:]
    top = top[(-scores[top]).argsort(kind="stable")]
    return top if scores[top[-1]] > _NO else top[scores[top] > _NO]


class TopK:
    """Top-K over one model's item table; builds the ANN index if the catalogue is large."""

    def __init__(self, glob: GlobalParams, *, ann_threshold: int = ANN_THRESHOLD, ann_backend: str = "auto",
                 ef_search: int = 128) -> None:
        self.glob = glob
        self._q = np.ascontiguousarray(glob.item_factors, np.float32)
        self._b = np.ascontiguousarray(glob.item_bias, np.float32)
        self.index: AnnIndex | None = None
        if glob.n_items >= ann_threshold and ann_backend != "none":
            rows = np.hstack([self._q, self._b[:, None]])
            self.index = build_index(rows, backend=ann_backend, ef_search=ef_search)
            self._rows = rows

    @property
    def n_items(self) -> int:
        return len(self._b)

    def recommend(self, user: LocalParams, k: int = 10, *, exclude: np.ndarray | None = None,
                  allow: np.ndarray | None = None, deny: np.ndarray | None = None) -> Recommendation:
        """The ``k`` best items for ``user`` not in ``exclude`` or ``deny``, restricted to ``allow`` if given."""
        if k < 1:
            raise ModelError(f"recommend: k must be >= 1, got {k}")
        p = np.asarray(user.user_factor, np.float32)
        offset = self.glob.global_mean + user.user_bias
        if allow is not None:
            return self._allowed(p, offset, k, np.asarray(allow, np.int64), exclude, deny)
        skip = exclude if deny is None else _union(exclude, deny)
        if self.index is not None and (skip is None or len(skip) < self.n_items // 2):
            return self._approximate(p, offset, k, _union(skip, None))
        scores = self._q @ p
        scores += self._b
        if skip is not None:
            scores[skip] = _NO
        top = exact_topk(scores, k)
        return Recommendation(top, scores[top] + np.float32(offset))

    def _allowed(self, p: np.ndarray, offset: float, k: int, allow: np.ndarray, exclude: np.ndarray | None,
                 deny: np.ndarray | None) -> Recommendation:
        allow = np.unique(allow)
        if len(allow) and (allow[0] < 0 or allow[-1] >= self.n_items):
            raise ModelError(f"recommend: allow-list holds items outside 0..{self.n_items - 1}")
        allow = allow[~np.isin(allow, _union(exclude, deny))]
        scores = self._q[allow] @ p + self._b[allow]
        top = exact_topk(scores, k)
        return Recommendation(allow[top], scores[top] + np.float32(offset))

    def _approximate(self, p: np.ndarray, offset: float, k: int, skip: np.ndarray) -> Recommendation:
        assert self.index is not None
        query = np.append(p, np.float32(1.0))
        cand = self.index.candidates(query, min(self.n_items, 3 * k + len(skip)))
        cand = cand[~np.isin(cand, skip)]
        scores = self._rows[cand] @ query
        top = exact_topk(scores, k)
        return Recommendation(cand[top], scores[top] + np.float32(offset))


def _union(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    if a is None and b is None:
        return np.empty(0, np.int64)
    if b is None or len(b) == 0:
        return np.asarray(a, np.int64)
    if a is None or len(a) == 0:
        return np.asarray(b, np.int64)
    return np.union1d(np.asarray(a, np.int64), np.asarray(b, np.int64))
