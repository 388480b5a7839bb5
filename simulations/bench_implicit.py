"""The full-catalogue implicit model beside implicit's ALS, tuned and tested in one run.

For each dataset (ML-100K R1, and a generated 20,000-item catalogue with
long-tailed popularity, ``tune_implicit.SYNTHETIC_20K``): both libraries are
tuned on the same validation split with the same budget
(:func:`simulations.tune_implicit.tune`), then each chosen setting is fitted
on the R1 train split from three initialisations (``TEST_SEEDS``; HR@10 moves
by about one standard error between starts, so one start would rank the two
libraries by luck) and scored on test (the mean is reported), together with fedrec's
federated ``"wrmf"`` loop (the in-process reference loop running the devices'
and server's code, every device every round, the tuned step size and round
count) and, with ``--engines``, the same federated choice on Flower's
Simulation Engine (``flower``: the plain uplink; ``flower-secure``: every
update, ``p p^T`` and curvature through secure aggregation, ``secagg.*`` at
their defaults). Prints HR@10, NDCG@10, fit seconds and, federated, seconds
per round (reference loop: one thread, the final evaluation of every device
included; Flower: the median training round), plus the targets: centralized
HR@10 >= ALS's, federated within 5% of centralized::

    python -m simulations.bench_implicit [--dataset ml-100k] [--engines flower,flower-secure] [--quick] [--json]
"""

from __future__ import annotations

from simulations.peers import single_thread

single_thread()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from fedrec.data.interactions import Dataset  # noqa: E402
from fedrec.data.registry import DATA_DIR_ENV  # noqa: E402
from fedrec.federated.reference import train_in_process  # noqa: E402
from fedrec.runconfig import RunConfig  # noqa: E402
from simulations import peers  # noqa: E402
from simulations.tune_implicit import (  # noqa: E402
    DATASETS,
    SYNTHETIC_20K,
    TEST_SEEDS,
    Candidate,
    fed_config,
    fedrec_central,
    implicit_central,
    load,
    sampled_central,
    tune,
)

ENGINES = ("flower", "flower-secure")


def federated_test(full: Dataset, cand: Candidate, lr: float, rounds: int) -> dict[str, float]:
    """Test metrics after ``rounds`` rounds; seconds per round, the one final evaluation included."""
    start = time.perf_counter()
    row = train_in_process(full, cand.fedrec_model(), fed_config(lr, rounds, rounds))[1][-1]
    total = time.perf_counter() - start
    return {"hr@10": float(row["hr@10"]), "ndcg@10": float(row["ndcg@10"]), "s_per_round": total / rounds,
            "rounds": rounds}


def flower_config(dataset: str, data_dir: str, cand: Candidate, lr: float, rounds: int, *,
                  secure: bool) -> RunConfig:
    """The run configuration of the federated choice for ``fedrec simulate`` (every device every round)."""
    if dataset == "synthetic-20k":
        data: dict[str, Any] = {"dataset": "synthetic", **{f"synthetic.{k.replace('_', '-')}": v
                                                            for k, v in dataclasses.asdict(SYNTHETIC_20K).items()}}
    else:
        data = {"dataset": dataset, "data-dir": data_dir}
    model = cand.fedrec_model()
    return RunConfig.from_flat({
        **data, "protocol": "R1", "rounds": rounds, "eval-every": rounds, "cohort": 1.0,
        "model.loss": "wrmf", "model.dim": model.dim, "model.reg": model.reg, "model.confidence": model.confidence,
        "model.recency-boost": model.recency_boost, "model.recency-scale": model.recency_scale,
        "model.pop-exponent": model.pop_exponent, "model.init-std": model.init_std,
        "strategy.optimizer": "sgd", "strategy.server-lr": lr,
        "secagg.enabled": secure})


def flower_test(cfg: RunConfig) -> dict[str, float]:
    """Test metrics of a run on Flower's Simulation Engine; seconds per round are the median training round."""
    from simulations.runner import simulate

    with tempfile.TemporaryDirectory() as run_dir:
        result = simulate(cfg, Path(run_dir))
    last = result.history[-1]
    train = [float(r["train_seconds"]) + float(r.get("aggregate_seconds", 0.0)) for r in result.history]
    return {"hr@10": float(last["hr@10"]), "ndcg@10": float(last["ndcg@10"]),
            "s_per_round": float(np.median(train)), "rounds": cfg.fed.rounds, "total_s": result.seconds}


def seeded(fit: Callable[[int], tuple[tuple[float, float], float]]) -> dict[str, Any]:
    """Test metrics averaged over :data:`TEST_SEEDS` initialisations (one validation choice, several starts)."""
    runs = [fit(seed) for seed in TEST_SEEDS]
    hrs = [r[0][0] for r in runs]
    return {"hr@10": float(np.mean(hrs)), "ndcg@10": float(np.mean([r[0][1] for r in runs])),
            "fit_s": float(np.median([r[1] for r in runs])), "hr@10_sd": float(np.std(hrs)),
            "hr@10_seeds": hrs}


def bench(dataset: str, data_dir: str, *, quick: bool, iterations: int, rounds: int, sampled: bool,
          say: Any, lrs: tuple[float, ...] = (0.6, 1.0), engines: tuple[str, ...] = ()) -> dict[str, Any]:
    choice = tune(dataset, data_dir, quick=quick, iterations=iterations, rounds=rounds, sampled=sampled,
                  federated=True, say=say, lrs=lrs)
    full = load(dataset, data_dir)
    out: dict[str, Any] = {"dataset": dataset, "choice": choice, "test": {}}
    if choice["fedrec"]["loss"] == "wrmf":
        cand = Candidate(**choice["fedrec"]["candidate"])
        out["test"]["fedrec central"] = seeded(lambda seed: fedrec_central(full, cand.fedrec_model(), iterations,
                                                                           seed))
    else:
        cand = None
        (hr, ndcg), fit = sampled_central(full)
        out["test"]["fedrec central"] = {"hr@10": hr, "ndcg@10": ndcg, "fit_s": fit}
    if "implicit" in choice:
        peer = Candidate(**choice["implicit"]["candidate"])
        out["test"]["implicit ALS"] = seeded(lambda seed: implicit_central(full, peer, iterations, seed))
    if cand is not None and "federated" in choice:
        fed = choice["federated"]
        out["test"]["fedrec federated"] = federated_test(full, cand, fed["server_lr"], fed["rounds"])
        for engine in engines:
            secure = engine == "flower-secure"
            say(f"{dataset}: {engine}, {fed['rounds']} rounds")
            out["test"][f"federated {engine}"] = flower_test(flower_config(
                dataset, data_dir, cand, fed["server_lr"], fed["rounds"], secure=secure))
    out["targets"] = targets(out["test"])
    return out


def targets(test: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Centralized HR@10 >= implicit ALS's; federated HR@10 within 5% of centralized."""
    central = test["fedrec central"]["hr@10"]
    out: dict[str, Any] = {}
    if "implicit ALS" in test:
        out["central_vs_als"] = central / test["implicit ALS"]["hr@10"]
        out["central_ge_als"] = central >= test["implicit ALS"]["hr@10"]
    for name in (n for n in test if "federated" in n):
        key = "federated" if name == "fedrec federated" else name.replace(" ", "_")
        out[f"{key}_vs_central"] = test[name]["hr@10"] / central
        out[f"{key}_within_5pct"] = out[f"{key}_vs_central"] >= 0.95
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=(*DATASETS, "all"), default="all")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, ""))
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--server-lrs", default="0.6,1.0", help="federated server step sizes to try")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sampled", action="store_true", help="also the sampled-negative model as a candidate")
    parser.add_argument("--engines", default="", help="also run the federated choice on Flower's Simulation "
                        "Engine: comma-separated 'flower' (plain uplink), 'flower-secure' (secure aggregation)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    engines = tuple(e for e in args.engines.split(",") if e)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"--engines: {unknown} not among {ENGINES}")
    say = (lambda line: None) if args.json else print
    results = [bench(n, args.data_dir, quick=args.quick, iterations=args.iterations, rounds=args.rounds,
                     sampled=args.sampled, say=say, lrs=tuple(float(x) for x in args.server_lrs.split(",")),
                     engines=engines)
               for n in names]
    if args.json:
        print(json.dumps({"results": results, "missing_peers": peers.missing()}))
        return 0
    print(f"\n{'dataset':<14} {'model':<24} {'hr@10':>7} {'ndcg@10':>8} {'fit s':>7} {'s/round':>8}")
    for res in results:
        for name, row in res["test"].items():
            fit = f"{row['fit_s']:.2f}" if "fit_s" in row else "-"
            rnd = f"{row['s_per_round']:.2f}" if "s_per_round" in row else "-"
            sd = f" (sd {row['hr@10_sd']:.4f} over {len(row['hr@10_seeds'])} starts)" if "hr@10_sd" in row else ""
            print(f"{res['dataset']:<14} {name:<24} {row['hr@10']:>7.4f} {row['ndcg@10']:>8.4f} {fit:>7} {rnd:>8}{sd}")
        print(f"{'':<14} targets: {res['targets']}")
        print(f"{'':<14} choices: {json.dumps(res['choice'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
