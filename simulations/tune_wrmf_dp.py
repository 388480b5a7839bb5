"""``model.loss = "wrmf"`` under user-level DP on ML-100K R1: clip and regularisation chosen on validation.

The joint clip ``dp.clip`` bounds each device's whole contribution (item
direction, ``p p^T`` and curvature together), which scales every user's share
of the loss by the same factor while ``model.reg`` stays: the two must be
chosen together. The grid (``dp.clip`` x ``model.reg``) is searched at
``--epsilon`` on the validation split (each user's second-to-last R1 training
interaction, :func:`simulations.tune_implicit.validation`), then the choice is
scored on test at each epsilon of ``--epsilons`` and without DP at the same
Poisson rate (``cohort`` = ``dp.cohort-rate``). The in-process reference loop
runs the devices' and the server's code; the other settings are the
benchmark's federated choice (dim 64, confidence 3, recency boost 4, server
step 0.6, 18 rounds)::

    python -m simulations.tune_wrmf_dp --data-dir ../shared/data [--quick] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Any

from fedrec.data.interactions import Dataset
from fedrec.data.registry import DATA_DIR_ENV
from fedrec.federated.reference import train_in_process
from fedrec.runconfig import RunConfig
from simulations.tune_implicit import load, validation

BASE: dict[str, Any] = {"protocol": "R1", "model.loss": "wrmf", "model.dim": 64, "model.confidence": 3.0,
                        "model.recency-boost": 4.0, "rounds": 18, "eval-every": 18, "strategy.optimizer": "sgd",
                        "strategy.server-lr": 0.6}
CLIPS = (0.5, 1.0, 2.0, 5.0)
REGS = (0.3, 1.0, 3.0)


def run(data: Dataset, *, clip: float, reg: float, epsilon: float | None, rate: float) -> dict[str, Any]:
    """Test (or validation) metrics of one point; ``epsilon`` None: no DP, cohorts of the same rate."""
    flat = {**BASE, "model.reg": reg}
    if epsilon is None:
        flat["cohort"] = rate
    else:
        flat.update({"dp.unit": "user", "dp.epsilon": epsilon, "dp.cohort-rate": rate, "dp.clip": clip,
                     "dp.delta": 1.0 / data.train.n_users})
    cfg = RunConfig.from_flat(flat)
    start = time.perf_counter()
    row = train_in_process(data, cfg.model, cfg.fed, privacy=None if epsilon is None else cfg.privacy_plan())[1][-1]
    return {"clip": clip, "reg": reg, "epsilon": epsilon, "hr@10": float(row["hr@10"]),
            "ndcg@10": float(row["ndcg@10"]), "epsilon_spent": row.get("epsilon"),
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, ""))
    parser.add_argument("--epsilon", type=float, default=8.0, help="the epsilon the grid is searched at")
    parser.add_argument("--epsilons", default="1,2,4,8,16", help="the epsilons the choice is scored at on test")
    parser.add_argument("--rate", type=float, default=0.2, help="dp.cohort-rate (Poisson sampling rate)")
    parser.add_argument("--quick", action="store_true", help="two grid points, one test epsilon")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda line: None) if args.json else print
    full = load("ml-100k", args.data_dir)
    tune = validation(full)
    grid = [(1.0, 0.3), (5.0, 3.0)] if args.quick else list(itertools.product(CLIPS, REGS))
    searched = []
    for clip, reg in grid:
        searched.append(run(tune, clip=clip, reg=reg, epsilon=args.epsilon, rate=args.rate))
        say(f"validation {json.dumps(searched[-1])}")
    best = max(searched, key=lambda r: r["hr@10"])
    epsilons: list[float | None] = [float(e) for e in args.epsilons.split(",")][: 1 if args.quick else None]
    tests = [run(full, clip=best["clip"], reg=best["reg"], epsilon=e, rate=args.rate) for e in [*epsilons, None]]
    if args.json:
        print(json.dumps({"validation": searched, "choice": {"clip": best["clip"], "reg": best["reg"]},
                          "test": tests}))
        return 0
    print(f"\nchosen on validation at epsilon {args.epsilon}: dp.clip {best['clip']}, model.reg {best['reg']}")
    print(f"{'epsilon':>8} {'hr@10':>7} {'ndcg@10':>8} {'seconds':>8}")
    for row in tests:
        eps = "no DP" if row["epsilon"] is None else f"{row['epsilon']:g}"
        print(f"{eps:>8} {row['hr@10']:>7.4f} {row['ndcg@10']:>8.4f} {row['seconds']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
