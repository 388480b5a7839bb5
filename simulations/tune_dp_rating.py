"""Rating-level DP recipe on a validation split of ``u1.base``: what limits its RMSE.

Every point starts from ``simulations/conf/dp-rating.toml`` and changes a few
keys; the validation rows are a random 10% of each user's ``u1.base`` ratings
(``u1.test`` is not read). Each line prints the validation RMSE at every
evaluated round and the epsilon each device spent::

    python -m simulations.tune_dp_rating --data-dir ../shared/data [--quick]

The first two points separate the two costs: the same recipe without noise
(``dp.epsilon = inf``, clipping and schedule unchanged) and with it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from fedrec.data.interactions import Dataset
from fedrec.data.registry import load_dataset
from fedrec.data.splits import validation_split
from fedrec.federated.reference import train_in_process
from fedrec.runconfig import RunConfig, Scalar, load_toml

CONFIG = Path(__file__).parent / "conf" / "dp-rating.toml"
POINTS: list[dict[str, Scalar]] = [
    {"dp.epsilon": math.inf, "eval-every": 2},
    {"eval-every": 2},
    {"rounds": 20, "eval-every": 10},
    {"strategy.server-lr": 40.0, "eval-every": 5},
    {"strategy.optimizer": "adam", "strategy.server-lr": 0.02, "rounds": 20, "eval-every": 5},
    {"model.dim": 1, "eval-every": 5},
    {"dp.clip": 0.5, "strategy.server-lr": 40.0, "eval-every": 5},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="the first two points, 2 rounds each")
    args = parser.parse_args()
    full = load_dataset("ml-100k", data_dir=args.data_dir, protocol="E1", fold=1)
    train, val = validation_split(full.train, kind="random", fraction=0.1, seed=0)
    tune = Dataset("ml-100k-u1-validation", train, val, full.rating_scale)
    base = load_toml(CONFIG)
    points = [{**p, "rounds": 2, "eval-every": 1} for p in POINTS[:2]] if args.quick else POINTS
    for point in points:
        cfg = RunConfig.from_flat({**base, "data-dir": args.data_dir, **point})
        start = time.perf_counter()
        _, history = train_in_process(tune, cfg.model, cfg.fed, privacy=cfg.privacy_plan())
        curve = " ".join(f"r{int(h['round'])} {h['rmse']:.4f}" for h in history if "rmse" in h)
        eps = history[-1].get("epsilon")
        print(f"{json.dumps(point, default=str)}: validation RMSE {curve}; epsilon {eps}; "
              f"{time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
