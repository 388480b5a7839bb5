"""Client SDK benchmark: on-device top-K and record-plus-refresh at three catalogue sizes.

``python -m simulations.bench_sdk [--json] [--sizes 1682,27000,100000]``

For each catalogue (d = 64, one thread), in one run: ``Device.recommend(k=10)``
p50/p99 (seen items excluded), the bare exact numpy scan (``Q p + b`` and
``argpartition``) measured alongside as the floor, the HNSW index's latency,
build time and recall@10 against exact, and record-plus-refresh (one
``Device.record``: the user's factor re-folded with the new row, then the
encrypted row written and fsynced) p50/p99.

The item table is synthetic with a decaying spectrum (singular values
``exp(-j/12)``), like a trained factor table; each user is folded in from 20
ratings drawn from a planted taste vector with the items' spectrum (a user
whose ratings carry signal, as in a trained model). The durable-write floor
is a bare SQLite commit of one small row (WAL, ``synchronous=FULL``) in the
same directory: the fsync a durable write cannot avoid. Numbers on a shared
2-core machine are noisy at p99.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single thread, before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from fedrec.client import Device  # noqa: E402

from fedrec.model.params import GlobalParams, LocalParams  # noqa: E402
from fedrec.recommend.topk import ANN_THRESHOLD, TopK, exact_topk  # noqa: E402
from fedrec.store.artifact import sign_model  # noqa: E402
from fedrec.store.device_store import Interaction  # noqa: E402
from fedrec.train.foldin import fold_in  # noqa: E402

DIM = 64
K = 10


def item_table(n_items: int, *, seed: int = 0) -> GlobalParams:
    """A synthetic item table shaped like a trained one (decaying spectrum, small biases)."""
    rng = np.random.default_rng([seed, n_items])
    spectrum = np.exp(-np.arange(DIM) / 12.0).astype(np.float32)
    q = rng.standard_normal((n_items, DIM)).astype(np.float32) * spectrum
    b = (rng.standard_normal(n_items) * 0.3).astype(np.float32)
    return GlobalParams(q, b, 3.5)


def planted_user(glob: GlobalParams, rng: np.random.Generator, n: int = 20) -> tuple[LocalParams, np.ndarray]:
    """A user folded in from ``n`` ratings of a planted taste vector (items drawn uniformly)."""
    spectrum = np.exp(-np.arange(DIM) / 12.0)
    taste = rng.standard_normal(DIM) * spectrum * 2.0
    items = rng.choice(glob.n_items, n, replace=False)
    raw = glob.global_mean + glob.item_bias[items] + glob.item_factors[items] @ taste + rng.normal(0, 0.5, n)
    ratings = np.clip(np.rint(raw), 1, 5).astype(np.float32)
    return fold_in(glob, items, ratings, reg=0.1, bias_reg=0.1), items


def durable_floor(work: Path, n: int) -> list[float]:
    """Bare SQLite commits of one 60-byte row, WAL + synchronous=FULL: the fsync floor."""
    import sqlite3

    conn = sqlite3.connect(work / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")

    def commit() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(60),))
        conn.execute("COMMIT")

    try:
        return time_calls(commit, n)
    finally:
        conn.close()


def percentiles(times: list[float]) -> dict[str, float]:
    """p50 and p99 in microseconds."""
    arr = np.asarray(times) * 1e6
    return {"p50_us": float(np.percentile(arr, 50)), "p99_us": float(np.percentile(arr, 99))}


def time_calls(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def floor_scan(q: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The exact-scan floor: one matrix-vector product, ``argpartition``, sort of the top ``K``."""
    s = q @ p
    s += b
    top = np.argpartition(s, len(s) - K)[len(s) - K:]
    return top[np.argsort(-s[top])]


def recall_at_k(topk: TopK, users: list[LocalParams], seen: list[np.ndarray]) -> float:
    """Mean overlap of the index's top-10 with the exact top-10 (seen items excluded in both)."""
    q, b = topk.glob.item_factors, topk.glob.item_bias
    hits = 0
    for user, s in zip(users, seen, strict=True):
        scores = q @ user.user_factor + b
        scores[s] = -np.inf
        exact = set(exact_topk(scores, K).tolist())
        hits += len(exact & set(topk.recommend(user, K, exclude=s).items.tolist()))
    return hits / (K * len(users))


def bench_size(n_items: int, *, work: Path, queries: int, records: int) -> dict[str, Any]:
    glob = item_table(n_items)
    sk = Ed25519PrivateKey.generate()
    rng = np.random.default_rng(n_items)
    dev = Device.open(work / f"bench-{n_items}.fedrec", key=os.urandom(32), public_key=sk.public_key())
    t = time.perf_counter()
    dev.load_model(sign_model(glob, round_=1, run="bench", signing_key=sk))
    load_s = time.perf_counter() - t
    dev.record_many([Interaction(int(i), float(rng.integers(1, 6)), False, 0)
                     for i in rng.choice(n_items, 20, replace=False)])
    factor = dev.factor
    assert factor is not None
    p = factor.user_factor
    q, b = np.ascontiguousarray(glob.item_factors), np.ascontiguousarray(glob.item_bias)
    for _ in range(20):
        dev.recommend(K)
        floor_scan(q, b, p)
    rec, flo = [], []
    for _ in range(queries):  # interleaved, so both see the same machine load
        rec += time_calls(lambda: dev.recommend(K), 1)
        flo += time_calls(lambda: floor_scan(q, b, p), 1)
    users, seen = [], []
    for _ in range(100):
        user, items = planted_user(glob, rng)
        users.append(user)
        seen.append(items)
    uses_ann = dev.topk is not None and dev.topk.index is not None
    if uses_ann:
        ann, ann_build = dev.topk, load_s
    else:
        t = time.perf_counter()
        ann = TopK(glob, ann_threshold=0)
        ann_build = time.perf_counter() - t
    assert ann is not None
    ann_times = time_calls(lambda: ann.recommend(factor, K, exclude=seen[0]), queries)
    recall = recall_at_k(ann, users, seen)
    next_item = iter(rng.permutation(n_items).tolist())
    rr, fl = [], []
    for _ in range(records):
        rr += time_calls(lambda: dev.record(next(next_item), rating=float(rng.integers(1, 6))), 1)
        fl += durable_floor(work, 1)
    dev.close()
    out = {"n_items": n_items, "dim": DIM, "k": K, "mode": "ann" if uses_ann else "exact",
           "recommend": percentiles(rec), "exact_floor": percentiles(flo),
           "ann": {"backend": ann.index.name if ann.index else None, **percentiles(ann_times),
                   "recall_at_10": recall, "build_s": ann_build},
           "record_plus_refresh": percentiles(rr), "durable_write_floor": percentiles(fl)}
    out["recommend_over_floor_p50"] = out["recommend"]["p50_us"] / out["exact_floor"]["p50_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sizes", default="1682,27000,100000")
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--records", type=int, default=200)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from rich.progress import Progress

    results = []
    with tempfile.TemporaryDirectory() as work, Progress(transient=True, disable=args.json) as bar:
        sizes = [int(s) for s in args.sizes.split(",")]
        task = bar.add_task("bench_sdk", total=len(sizes))
        for n in sizes:
            results.append(bench_size(n, work=Path(work), queries=args.queries, records=args.records))
            bar.advance(task)
    report = {"benchmark": "sdk", "threads": 1, "ann_threshold": ANN_THRESHOLD, "sizes": results}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'items':>8} {'mode':>5} | {'recommend p50/p99 us':>21} | {'floor p50/p99 us':>17} | {'ratio':>5} | "
          f"{'ANN p50/p99 us':>15} {'recall@10':>9} {'build s':>7} | {'record+refresh p50/p99 ms':>25} | "
          f"{'fsync floor p50/p99 ms':>22}")
    for r in results:
        a = r["ann"]
        print(f"{r['n_items']:>8} {r['mode']:>5} | {r['recommend']['p50_us']:>10.1f}/{r['recommend']['p99_us']:<10.1f}"
              f" | {r['exact_floor']['p50_us']:>8.1f}/{r['exact_floor']['p99_us']:<8.1f} | "
              f"{r['recommend_over_floor_p50']:>5.2f} | {a['p50_us']:>7.1f}/{a['p99_us']:<7.1f} "
              f"{a['recall_at_10']:>9.3f} {a['build_s']:>7.1f} | {r['record_plus_refresh']['p50_us'] / 1e3:>12.2f}/"
              f"{r['record_plus_refresh']['p99_us'] / 1e3:<12.2f} | {r['durable_write_floor']['p50_us'] / 1e3:>10.2f}/"
              f"{r['durable_write_floor']['p99_us'] / 1e3:<10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
