"""How the R1 defaults were chosen: a grid on a validation split carved from the R1 train split.

The validation item is each user's second-to-last interaction (leave-last-out
applied to the R1 train split); the R1 test items are not read until the chosen
settings are evaluated once at the end. Centralized (trainer) settings are
chosen first; the federated settings (reference loop: the device step and
server aggregation of the Flower apps) are then chosen for the chosen model the
same way. Selection is by HR@10, ties by NDCG@10::

    python -m simulations.tune_r1 --data-dir ../shared/data [--quick] [--skip-federated]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from typing import Any

from fedrec.data.interactions import Dataset
from fedrec.data.registry import load_dataset
from fedrec.data.splits import leave_last_out
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import FedConfig
from fedrec.metrics.evaluate import baseline_metrics, evaluate
from fedrec.model.mf import MFConfig
from fedrec.runconfig import protocol_preset
from fedrec.train.aggregate import ServerOptConfig
from fedrec.train.central import CENTRAL_PRESETS, CentralConfig, train_central
from fedrec.train.local import LocalConfig

Scores = tuple[float, float]
FED_ROUNDS, FED_EVERY = 160, 20


def central_scores(data: Dataset, model: MFConfig, trainer: CentralConfig) -> Scores:
    fitted = train_central(data.train, model, trainer)
    m = evaluate(data, "R1", predict=fitted.predict, score_block=fitted.score_block)
    return m["hr@10"], m["ndcg@10"]


def federated_scores(data: Dataset, model: MFConfig, fed: FedConfig) -> Scores:
    last = train_in_process(data, model, fed)[1][-1]
    return float(last["hr@10"]), float(last["ndcg@10"])


def central_grid(quick: bool) -> list[tuple[MFConfig, CentralConfig]]:
    if quick:
        return [(MFConfig(kind="implicit", dim=32, reg=0.01, bias_reg=0.01, negatives=16, neg_weight=32.0,
                          recency_boost=boost), CentralConfig(epochs=10, lr=0.01)) for boost in (0.0, 4.0)]
    grid = []
    for dim, reg, weight, boost in itertools.product((32, 64), (0.01, 0.02), (16.0, 32.0), (0.0, 4.0)):
        model = MFConfig(kind="implicit", dim=dim, reg=reg, bias_reg=0.01, negatives=16, neg_weight=weight,
                         recency_boost=boost, recency_scale=5.0)
        grid.append((model, CentralConfig(epochs=40, lr=0.01, batch_size=512)))
    return grid


def federated_grid(quick: bool) -> list[FedConfig]:
    """Local steps x local lr, each run to ``FED_ROUNDS`` with an evaluation every ``FED_EVERY`` rounds.

    Every evaluated round is a candidate, so the round count is chosen on
    validation too. Fewer, larger local steps won: with five or ten steps a
    device's item rows drift towards its own optimum between rounds.
    """
    rounds, every = (10, 5) if quick else (FED_ROUNDS, FED_EVERY)
    points = [(2, 0.6)] if quick else [(5, 0.3), (2, 0.3), (2, 0.6), (2, 1.2), (1, 0.6), (1, 1.2)]
    return [FedConfig(rounds=rounds, eval_every=every, averaging="item",
                      local=LocalConfig(steps=steps, lr=lr, user_lr=1.0, fold_in=False),
                      server=ServerOptConfig(name="adam", lr=0.05)) for steps, lr in points]


def federated_curve(data: Dataset, model: MFConfig, fed: FedConfig) -> list[tuple[Scores, int]]:
    """``((hr@10, ndcg@10), round)`` at every evaluated round of one run."""
    history = train_in_process(data, model, fed)[1]
    return [((float(h["hr@10"]), float(h["ndcg@10"])), int(h["round"])) for h in history if "hr@10" in h]


def describe(cfg: Any, *names: str) -> str:
    return " ".join(f"{n} {getattr(cfg, n)}" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="a 2-point central and 1-point federated grid, short runs")
    parser.add_argument("--skip-federated", action="store_true")
    args = parser.parse_args()
    full = load_dataset("ml-100k", data_dir=args.data_dir, protocol="R1")
    train, val = leave_last_out(full.train)
    tune = Dataset("ml-100k-r1-validation", train, val, None)
    for name, data in (("validation", tune), ("test", full)):
        pop = baseline_metrics(data, "R1")
        print(f"popularity on {name}: hr@10 {pop['hr@10']:.4f} ndcg@10 {pop['ndcg@10']:.4f}")

    print("centralized (validation):")
    best_c: tuple[Scores, int] | None = None
    grid = central_grid(args.quick)
    for k, (model, trainer) in enumerate(grid):
        t = time.perf_counter()
        scores = central_scores(tune, model, trainer)
        print(f"  {describe(model, 'dim', 'reg', 'neg_weight', 'recency_boost')} "
              f"{describe(trainer, 'epochs', 'lr')}: hr@10 {scores[0]:.4f} ndcg@10 {scores[1]:.4f} "
              f"({time.perf_counter() - t:.1f}s)", flush=True)
        if best_c is None or scores > best_c[0]:
            best_c = (scores, k)
    assert best_c is not None
    model, trainer = grid[best_c[1]]
    print(f"chosen: {model}\n        {trainer}")
    print(f"equals the R1 presets: {model == protocol_preset('R1').model and trainer == CENTRAL_PRESETS['R1']}")
    t = time.perf_counter()
    central_test = central_scores(full, model, trainer)
    print(f"centralized test: hr@10 {central_test[0]:.4f} ndcg@10 {central_test[1]:.4f} "
          f"({time.perf_counter() - t:.1f}s)", flush=True)
    if args.skip_federated:
        return

    print("federated, all devices every round (validation):")
    best_f: tuple[Scores, int, FedConfig] | None = None
    for fed in federated_grid(args.quick):
        t = time.perf_counter()
        curve = federated_curve(tune, model, fed)
        marks = " ".join(f"r{rnd} {hr:.4f}/{ndcg:.4f}" for (hr, ndcg), rnd in curve)
        print(f"  {describe(fed.local, 'steps', 'lr', 'user_lr')} server {fed.server.name} {fed.server.lr}: "
              f"hr@10/ndcg@10 {marks} ({time.perf_counter() - t:.1f}s)", flush=True)
        for scores, rnd in curve:
            if best_f is None or (scores, -rnd) > (best_f[0], -best_f[1]):
                best_f = (scores, rnd, fed)
    assert best_f is not None
    fed = dataclasses.replace(best_f[2], rounds=best_f[1], eval_every=best_f[1])
    print(f"chosen: {dataclasses.asdict(fed)}")
    preset = dataclasses.replace(protocol_preset("R1").fed, eval_every=fed.eval_every)
    print(f"equals the R1 federated preset (but for eval_every): {fed == preset}")
    t = time.perf_counter()
    fed_test = federated_scores(full, model, fed)
    print(f"federated test: hr@10 {fed_test[0]:.4f} ndcg@10 {fed_test[1]:.4f} "
          f"({time.perf_counter() - t:.1f}s)")
    print(f"federated / centralized test hr@10: {fed_test[0] / central_test[0]:.3f}")


if __name__ == "__main__":
    main()
