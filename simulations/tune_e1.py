"""How the E1 defaults were chosen: a grid on a validation split carved from ``u1.base``.

The validation rows are a random 10% of each user's ``u1.base`` ratings
(``validation_split(kind="random")``); ``u1.test`` is not read until the chosen
settings are evaluated once at the end. Centralized (trainer) and federated
(reference loop: device step and server aggregation of the Flower apps) settings
are chosen the same way::

    python -m simulations.tune_e1 --data-dir ../shared/data [--quick]
    python -m simulations.tune_e1 --data-dir ../shared/data --als   # the ALS trainer's grid only
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

from fedrec.data.interactions import Dataset
from fedrec.data.registry import load_dataset
from fedrec.data.splits import validation_split
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import FedConfig
from fedrec.metrics.evaluate import evaluate
from fedrec.model.mf import MFConfig
from fedrec.train.aggregate import ServerOptConfig
from fedrec.train.central import ALS_PRESETS, CentralConfig, train_central
from fedrec.train.local import LocalConfig


def central_rmse(data: Dataset, model: MFConfig, trainer: CentralConfig) -> float:
    fitted = train_central(data.train, model, trainer)
    return evaluate(data, "E1", predict=fitted.predict, score_block=fitted.score_block)["rmse"]


def federated_rmse(data: Dataset, model: MFConfig, fed: FedConfig) -> float:
    return train_in_process(data, model, fed)[1][-1]["rmse"]


def als_grid(tune: Dataset, full: Dataset) -> None:
    """dim x reg x bias_reg for the ALS trainer (15 sweeps), chosen on validation, then one test fit."""
    print("centralized ALS, 15 sweeps (validation RMSE):")
    best = None
    for dim, reg, bias_reg in itertools.product((32, 64), (0.12, 0.14, 0.16), (0.05, 0.12)):
        model = MFConfig(dim=dim, reg=reg, bias_reg=bias_reg)
        t = time.perf_counter()
        rmse = central_rmse(tune, model, CentralConfig(epochs=15, solver="als"))
        print(f"  dim {dim:<3} reg {reg:<5} bias-reg {bias_reg:<5} rmse {rmse:.4f}  ({time.perf_counter() - t:.1f}s)")
        best = min(best or (rmse, dim, reg, bias_reg), (rmse, dim, reg, bias_reg))
    assert best is not None
    _, dim, reg, bias_reg = best
    model, trainer = MFConfig(dim=dim, reg=reg, bias_reg=bias_reg), CentralConfig(epochs=15, solver="als")
    print(f"chosen: dim {dim}, reg {reg}, bias-reg {bias_reg}; u1.test RMSE {central_rmse(full, model, trainer):.4f}")
    print(f"equals ALS_PRESETS['E1']: {(model, trainer) == ALS_PRESETS['E1']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="a 2-point grid per part")
    parser.add_argument("--als", action="store_true", help="only the ALS trainer's grid")
    args = parser.parse_args()
    full = load_dataset("ml-100k", data_dir=args.data_dir, protocol="E1", fold=1)
    train, val = validation_split(full.train, kind="random", fraction=0.1, seed=0)
    tune = Dataset("ml-100k-u1-validation", train, val, full.rating_scale)
    if args.als:
        als_grid(tune, full)
        return

    regs, epochs = ((0.08, 0.1), (40,)) if args.quick else ((0.05, 0.08, 0.1, 0.12, 0.15), (30, 40, 60))
    print("centralized (validation RMSE):")
    best_c = None
    for reg, ep in itertools.product(regs, epochs):
        t = time.perf_counter()
        rmse = central_rmse(tune, MFConfig(dim=32, reg=reg, bias_reg=reg), CentralConfig(epochs=ep, lr=0.005))
        print(f"  reg {reg:<5} epochs {ep:<3} rmse {rmse:.4f}  ({time.perf_counter() - t:.1f}s)")
        best_c = min(best_c or (rmse, reg, ep), (rmse, reg, ep))
    assert best_c is not None
    _, reg, ep = best_c
    model = MFConfig(dim=32, reg=reg, bias_reg=reg)
    test = central_rmse(full, model, CentralConfig(epochs=ep, lr=0.005))
    print(f"chosen: reg {reg}, epochs {ep}; u1.test RMSE {test:.4f}")

    server_lrs, steps = ((3.0,), (5,)) if args.quick else ((2.0, 3.0, 4.0), (5, 10))
    print("federated, 30 rounds, all devices (validation RMSE):")
    best_f = None
    for slr, st in itertools.product(server_lrs, steps):
        fed = FedConfig(rounds=30, eval_every=30, local=LocalConfig(steps=st, lr=0.1 * 5 / st),
                        server=ServerOptConfig(lr=slr))
        t = time.perf_counter()
        rmse = federated_rmse(tune, model, fed)
        print(f"  server-lr {slr:<4} local.steps {st:<3} rmse {rmse:.4f}  ({time.perf_counter() - t:.1f}s)")
        best_f = min(best_f or (rmse, slr, st), (rmse, slr, st))
    assert best_f is not None
    _, slr, st = best_f
    fed = FedConfig(rounds=30, eval_every=30, local=LocalConfig(steps=st, lr=0.1 * 5 / st),
                    server=ServerOptConfig(lr=slr))
    print(f"chosen: server-lr {slr}, local.steps {st}; u1.test RMSE {federated_rmse(full, model, fed):.4f}")
    print(dataclasses.asdict(fed))


if __name__ == "__main__":
    main()
