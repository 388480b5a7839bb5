"""Cold start through the SDK's fold-in on ML-100K: users the model never saw, given a few ratings.

``FEDREC_DATA_DIR=... python -m simulations.coldstart_sdk [--json] [--plot DIR]``

Protocol. 10% of the users with at least 40 ratings are held out of training
entirely (seeded). The model (E1 preset: explicit MF, d = 32) is trained
centrally on every other user. Each held-out user's ratings are sorted by time;
the first ``N`` in (1, 2, 5, 10, 20) are given to the device, which folds the
user in exactly as ``Device.record`` does (:func:`fedrec.recommend.stream.user_factor`);
the test set is every rating after the first 20, the same for every ``N`` so
the points are comparable. Metrics on the test set: RMSE, and HR@10 (a hit when
any test item rated >= 4 is in the top 10 of all items the user has not given).

References on the same test set: the item-bias baseline (``mu + b_i``, the
zero factor) and popularity (HR only: items by rating count) from the same
model; and the same users *fully trained*: a second model trained with their
first 20 ratings included, scored with their trained factors.

ML-100K is licensed: the PNG goes to a folder you choose (keep it out of git).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.data.movielens import load_ml100k
from fedrec.errors import ConfigError
from fedrec.metrics.core import ranking_sums
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.recommend.stream import FoldInConfig, user_factor
from fedrec.runconfig import protocol_preset
from fedrec.train.central import CENTRAL_PRESETS, train_central

log = logging.getLogger(__name__)

GIVEN = (1, 2, 5, 10, 20)
MIN_RATINGS = 40
LIKED = 4.0


def split_users(data: Interactions, *, seed: int, fraction: float = 0.1) -> np.ndarray:
    """The held-out users: ``fraction`` of those with at least ``MIN_RATINGS`` ratings."""
    counts = np.bincount(data.users, minlength=data.n_users)
    eligible = np.flatnonzero(counts >= MIN_RATINGS)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, max(1, int(fraction * len(eligible))), replace=False))


def by_time(data: Interactions, user: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(data.users == user)
    rows = rows[np.lexsort((data.items[rows], data.timestamps[rows]))]
    return data.items[rows], data.ratings[rows].astype(np.float32)


def evaluate(glob: GlobalParams, users: list[LocalParams], given: list[np.ndarray],
             tests: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """RMSE over all test ratings and HR@10 on liked test items, for one factor per user."""
    err, n = 0.0, 0
    scores = np.empty((len(users), glob.n_items))
    for row, (user, (items, ratings)) in enumerate(zip(users, tests, strict=True)):
        full = glob.global_mean + user.user_bias + glob.item_bias + glob.item_factors @ user.user_factor
        pred = np.clip(full[items], 1.0, 5.0)
        err += float(((pred - ratings) ** 2).sum())
        n += len(items)
        scores[row] = full
    liked = [items[ratings >= LIKED] for items, ratings in tests]
    sums = ranking_sums(scores, given, liked, ks=(10,))
    return {"rmse": float(np.sqrt(err / n)), "hr10": float(sums.result()["hr@10"])}


def popularity_hr(train: Interactions, given: list[np.ndarray], tests: list[tuple[np.ndarray, np.ndarray]]) -> float:
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float64)
    scores = np.tile(counts, (len(given), 1))
    liked = [items[ratings >= LIKED] for items, ratings in tests]
    return float(ranking_sums(scores, given, liked, ks=(10,)).result()["hr@10"])


def run(data_dir: str, *, seed: int, epochs: int | None, prior_count: int) -> dict[str, Any]:
    data = load_ml100k(data_dir)
    held = split_users(data, seed=seed)
    model = protocol_preset("E1").model
    trainer = CENTRAL_PRESETS["E1"]
    if epochs is not None:
        from dataclasses import replace

        trainer = replace(trainer, epochs=epochs)
    histories = [by_time(data, int(u)) for u in held]
    tests = [(items[20:], ratings[20:]) for items, ratings in histories]
    out_mask = np.isin(data.users, held)
    t = time.perf_counter()
    cold_model = train_central(data.subset(~out_mask), model, trainer)
    glob = cold_model.glob
    log.info("coldstart: model without the %d held-out users trained in %.0f s", len(held), time.perf_counter() - t)
    cfg = FoldInConfig(reg=model.reg, bias_reg=model.bias_reg, prior_count=prior_count)
    rows: list[dict[str, Any]] = []
    for n in GIVEN:
        given = [items[:n] for items, _ in histories]
        users = [user_factor(glob, items[:n], ratings[:n], np.zeros(n, bool), config=cfg)
                 for items, ratings in histories]
        fold = evaluate(glob, users, given, tests)
        zero = evaluate(glob, [LocalParams.zeros(glob.dim)] * len(held), given, tests)
        rows.append({"given": n, "foldin_rmse": fold["rmse"], "foldin_hr10": fold["hr10"],
                     "item_bias_rmse": zero["rmse"], "item_bias_hr10": zero["hr10"],
                     "popularity_hr10": popularity_hr(data.subset(~out_mask), given, tests)})
    first20 = np.zeros(len(data), bool)
    for u in held:
        rows_u = np.flatnonzero(data.users == u)
        rows_u = rows_u[np.lexsort((data.items[rows_u], data.timestamps[rows_u]))]
        first20[rows_u[:20]] = True
    full_model = train_central(data.subset(~out_mask | first20), model, trainer)
    trained = [LocalParams(full_model.users.user_factors[u], float(full_model.users.user_bias[u])) for u in held]
    full = evaluate(full_model.glob, trained, [items[:20] for items, _ in histories], tests)
    return {"benchmark": "coldstart-sdk", "dataset": "ml-100k", "held_out_users": len(held),
            "test_ratings": int(sum(len(t[0]) for t in tests)), "model": "E1 (explicit, d=32)",
            "epochs": trainer.epochs, "seed": seed, "prior_count": prior_count, "rows": rows,
            "fully_trained_20": {"rmse": full["rmse"], "hr10": full["hr10"]}}


def plot(report: dict[str, Any], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    n = [r["given"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [r["foldin_rmse"] for r in rows], "o-", label="SDK fold-in")
    a.plot(n, [r["item_bias_rmse"] for r in rows], "s--", label="item bias")
    a.axhline(report["fully_trained_20"]["rmse"], color="gray", ls=":", label="fully trained (20 given)")
    a.set(xscale="log", xlabel="ratings given", ylabel="RMSE", title="Cold start: RMSE")
    b.plot(n, [r["foldin_hr10"] for r in rows], "o-", label="SDK fold-in")
    b.plot(n, [r["item_bias_hr10"] for r in rows], "s--", label="item bias")
    b.plot(n, [r["popularity_hr10"] for r in rows], "^--", label="popularity")
    b.axhline(report["fully_trained_20"]["hr10"], color="gray", ls=":", label="fully trained (20 given)")
    b.set(xscale="log", xlabel="ratings given", ylabel="HR@10 (liked test items)", title="Cold start: HR@10")
    for ax in (a, b):
        ax.legend()
        ax.set_xticks(n, [str(x) for x in n])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "coldstart_sdk.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--plot", type=Path, default=Path("runs/coldstart"), help="folder for the PNG (git-ignored)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="override the E1 preset's epochs")
    ap.add_argument("--prior-count", type=int, default=FoldInConfig().prior_count,
                    help="fold-in pseudo-count for users with few ratings (0: the plain per-rating penalty)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.json else logging.WARNING)
    data_dir = os.environ.get("FEDREC_DATA_DIR")
    if not data_dir:
        raise SystemExit("coldstart_sdk: set FEDREC_DATA_DIR to the folder holding ml-100k")
    try:
        report = run(data_dir, seed=args.seed, epochs=args.epochs, prior_count=args.prior_count)
    except ConfigError as exc:
        raise SystemExit(f"coldstart_sdk: {exc}") from None
    report["plot"] = str(plot(report, args.plot))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['held_out_users']} held-out users, {report['test_ratings']} test ratings")
    print(f"{'given':>5} | {'RMSE fold-in':>12} {'item bias':>9} | {'HR@10 fold-in':>13} {'item bias':>9} "
          f"{'popularity':>10}")
    for r in report["rows"]:
        print(f"{r['given']:>5} | {r['foldin_rmse']:>12.4f} {r['item_bias_rmse']:>9.4f} | {r['foldin_hr10']:>13.4f} "
              f"{r['item_bias_hr10']:>9.4f} {r['popularity_hr10']:>10.4f}")
    f = report["fully_trained_20"]
    print(f"fully trained with 20 given: RMSE {f['rmse']:.4f}, HR@10 {f['hr10']:.4f}; plot: {report['plot']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
