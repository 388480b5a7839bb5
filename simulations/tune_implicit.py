"""Implicit-feedback settings chosen on validation only, for fedrec and for implicit's ALS alike.

The validation item is each user's second-to-last interaction (leave-last-out
applied to the R1 train split, as in ``simulations.tune_r1``); the test items
are not read here. Both libraries get the same budget: the same number of
validation fits, the same sweep count (15) and conjugate-gradient steps (3),
the same factors (64), confidence scales ``alpha`` {1, 3, 10} and recency
weightings {0, 4} (implicit receives the confidences ``1 + alpha * w`` as its
matrix values, so at equal settings both fit the same objective), and nine
points on the axes each library has: implicit nine regularisations, fedrec
three regularisations x three popularity exponents of the missing-data weight
(``model.pop-exponent`` {0, -0.25, -0.5}; 0 is implicit's uniform weight,
which implicit cannot change). fedrec's candidates are the
full-catalogue model (``model.loss = "wrmf"``) and, with ``--sampled``, the
sampled-negative model of the R1 presets: validation chooses. The federated
``"wrmf"`` loop (in-process reference loop, every device every round) is then
tuned for the chosen model: server step size, and the round count from its
validation curve. Selection is by HR@10, ties by NDCG@10::

    python -m simulations.tune_implicit --dataset ml-100k [--quick] [--sampled] [--json]
    python -m simulations.tune_implicit --dataset synthetic-20k
"""

from __future__ import annotations

from simulations.peers import single_thread

single_thread()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from fedrec.data.interactions import Dataset  # noqa: E402
from fedrec.data.registry import DATA_DIR_ENV, load_dataset  # noqa: E402
from fedrec.data.splits import leave_last_out  # noqa: E402
from fedrec.data.synthetic import SyntheticConfig  # noqa: E402
from fedrec.federated.reference import train_in_process  # noqa: E402
from fedrec.federated.server_state import FedConfig  # noqa: E402
from fedrec.metrics.evaluate import evaluate  # noqa: E402
from fedrec.model.mf import MFConfig  # noqa: E402
from fedrec.runconfig import protocol_preset  # noqa: E402
from fedrec.train.aggregate import ServerOptConfig  # noqa: E402
from fedrec.train.als import confidence_weights  # noqa: E402
from fedrec.train.central import CENTRAL_PRESETS, CentralConfig, train_central  # noqa: E402
from simulations import peers  # noqa: E402

log = logging.getLogger(__name__)

Scores = tuple[float, float]

#: A long-tailed implicit catalogue of 20,000 items (generated, never stored).
SYNTHETIC_20K = SyntheticConfig(n_users=2000, n_items=20_000, rank=16, mean_interactions=40.0, min_interactions=5,
                                zipf_exponent=1.0, implicit=True, seed=0)
DATASETS = ("ml-100k", "synthetic-20k")


@dataclass(frozen=True)
class Candidate:
    """One grid point (``pop_exponent`` is fedrec's alone; implicit's points keep it 0)."""

    dim: int
    reg: float
    alpha: float
    recency_boost: float
    pop_exponent: float = 0.0

    def fedrec_model(self) -> MFConfig:
        return MFConfig(kind="implicit", loss="wrmf", dim=self.dim, reg=self.reg, confidence=self.alpha,
                        recency_boost=self.recency_boost, recency_scale=5.0, pop_exponent=self.pop_exponent)


def load(name: str, data_dir: str) -> Dataset:
    """The R1 split of ``name`` (``ml-100k`` or ``synthetic-20k``)."""
    if name == "synthetic-20k":
        return load_dataset("synthetic", protocol="R1", synthetic=SYNTHETIC_20K)
    return load_dataset(name, data_dir=data_dir or None, protocol="R1")


def validation(full: Dataset) -> Dataset:
    """Leave-last-out applied to the R1 train split: nothing of the test split is read."""
    train, val = leave_last_out(full.train)
    return Dataset(f"{full.name}-validation", train, val, None)


#: The axes each library has, nine points each: the grids have the same size.
FEDREC_REG_EXP = tuple(itertools.product((0.3, 3.0, 30.0), (0.0, -0.25, -0.5)))
IMPLICIT_REGS = (0.1, 0.3, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 100.0)
#: Init seeds each library's choice is scored with on test (the mean is reported).
TEST_SEEDS = (0, 1, 2)


def grid(quick: bool, lib: str) -> list[Candidate]:
    """``lib``'s grid (``"fedrec"`` or ``"implicit"``): 54 points each, ``--quick`` two."""
    if quick:
        return [Candidate(64, 3.0, 3.0, 0.0), Candidate(64, 3.0, 3.0, 4.0)]
    shared = list(itertools.product((1.0, 3.0, 10.0), (0.0, 4.0)))
    if lib == "fedrec":
        return [Candidate(64, reg, alpha, boost, exp) for alpha, boost in shared for reg, exp in FEDREC_REG_EXP]
    return [Candidate(64, reg, alpha, boost) for alpha, boost in shared for reg in IMPLICIT_REGS]


def scores(metrics: dict[str, float]) -> Scores:
    return metrics["hr@10"], metrics["ndcg@10"]


def fedrec_central(data: Dataset, model: MFConfig, iterations: int, seed: int = 0) -> tuple[Scores, float]:
    start = time.perf_counter()
    fitted = train_central(data.train, model, CentralConfig(epochs=iterations, solver="als", seed=seed))
    seconds = time.perf_counter() - start
    return scores(evaluate(data, "R1", predict=fitted.predict, score_block=fitted.score_block)), seconds


def implicit_central(data: Dataset, cand: Candidate, iterations: int, seed: int = 0) -> tuple[Scores, float]:
    weights = confidence_weights(data.train, cand.fedrec_model())
    fit = peers.implicit_als(data.train, factors=cand.dim, regularization=cand.reg, alpha=cand.alpha,
                             iterations=iterations, weights=weights, seed=seed)
    return scores(evaluate(data, "R1", predict=fit.predict, score_block=fit.score_block)), fit.seconds


def sampled_central(data: Dataset) -> tuple[Scores, float]:
    """The sampled-negative model and trainer of the R1 presets (fedrec's other implicit candidate)."""
    start = time.perf_counter()
    fitted = train_central(data.train, protocol_preset("R1").model, CENTRAL_PRESETS["R1"])
    seconds = time.perf_counter() - start
    return scores(evaluate(data, "R1", predict=fitted.predict, score_block=fitted.score_block)), seconds


def best(points: list[tuple[Scores, Any]]) -> tuple[Scores, Any]:
    return max(points, key=lambda p: p[0])


Report = Callable[[str], None]


def tune_central(tune: Dataset, quick: bool, iterations: int, sampled: bool, say: Report) -> dict[str, Any]:
    """Both libraries over the same grid on validation; returns the choices and their validation scores."""
    out: dict[str, Any] = {}
    runs: dict[str, list[tuple[Scores, Any]]] = {"fedrec": [], "implicit": []}
    for cand in grid(quick, "fedrec"):
        s, t = fedrec_central(tune, cand.fedrec_model(), iterations)
        runs["fedrec"].append((s, cand))
        say(f"  fedrec {cand}: hr@10 {s[0]:.4f} ndcg@10 {s[1]:.4f} ({t:.1f}s)")
    if "implicit" not in peers.missing():
        for cand in grid(quick, "implicit"):
            s, t = implicit_central(tune, cand, iterations)
            runs["implicit"].append((s, cand))
            say(f"  implicit {cand}: hr@10 {s[0]:.4f} ndcg@10 {s[1]:.4f} ({t:.1f}s)")
    for lib, points in runs.items():
        if points:
            s, cand = best(points)
            out[lib] = {"candidate": dataclasses.asdict(cand), "validation": {"hr@10": s[0], "ndcg@10": s[1]}}
    out["fedrec"]["loss"] = "wrmf"
    if sampled:
        s, t = sampled_central(tune)
        say(f"  sampled logistic (R1 presets): hr@10 {s[0]:.4f} ndcg@10 {s[1]:.4f} ({t:.1f}s)")
        out["sampled"] = {"validation": {"hr@10": s[0], "ndcg@10": s[1]}}
        if s > best(runs["fedrec"])[0]:
            out["fedrec"]["loss"] = protocol_preset("R1").model.loss
    return out


def fed_config(lr: float, rounds: int, every: int) -> FedConfig:
    """The federated ``"wrmf"`` loop: every device every round, plain server step of size ``lr``."""
    return FedConfig(rounds=rounds, cohort=1.0, eval_every=every, server=ServerOptConfig(name="sgd", lr=lr))


def tune_federated(tune: Dataset, model: MFConfig, lrs: tuple[float, ...], rounds: int,
                   say: Report) -> dict[str, Any]:
    """Server step size x rounds (every evaluated round a candidate) on validation."""
    points: list[tuple[Scores, tuple[float, int]]] = []
    every = max(rounds // 4, 1)
    for lr in lrs:
        start = time.perf_counter()
        history = train_in_process(tune, model, fed_config(lr, rounds, every))[1]
        per_round = (time.perf_counter() - start) / rounds
        marks = []
        for row in history:
            s = (float(row["hr@10"]), float(row["ndcg@10"]))
            points.append((s, (lr, -int(row["round"]))))
            marks.append(f"r{int(row['round'])} {s[0]:.4f}")
        say(f"  server lr {lr}: {' '.join(marks)} ({per_round:.1f}s per round incl. evaluation)")
    s, (lr, neg_round) = max(points, key=lambda p: (p[0], p[1][1]))
    return {"server_lr": lr, "rounds": -neg_round, "validation": {"hr@10": s[0], "ndcg@10": s[1]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="ml-100k")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, ""))
    parser.add_argument("--iterations", type=int, default=15, help="ALS sweeps, both libraries")
    parser.add_argument("--rounds", type=int, default=24, help="federated rounds to tune over")
    parser.add_argument("--server-lrs", default="0.6,1.0", help="federated server step sizes to try")
    parser.add_argument("--quick", action="store_true", help="a 2-point grid, one server step size")
    parser.add_argument("--sampled", action="store_true", help="also the sampled-negative R1 preset (slow)")
    parser.add_argument("--skip-federated", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = tune(args.dataset, args.data_dir, quick=args.quick, iterations=args.iterations, rounds=args.rounds,
                  sampled=args.sampled, federated=not args.skip_federated,
                  lrs=tuple(float(x) for x in args.server_lrs.split(",")),
                  say=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def tune(dataset: str, data_dir: str, *, quick: bool, iterations: int, rounds: int, sampled: bool,
         federated: bool, say: Report, lrs: tuple[float, ...] = (0.6, 1.0)) -> dict[str, Any]:
    """The whole search on ``dataset``'s validation split."""
    tune_data = validation(load(dataset, data_dir))
    say(f"{dataset}: validation grid ({iterations} ALS sweeps each)")
    result: dict[str, Any] = {"dataset": dataset, "iterations": iterations, "missing_peers": peers.missing()}
    result.update(tune_central(tune_data, quick, iterations, sampled, say))
    if federated and result["fedrec"]["loss"] == "wrmf":
        model = Candidate(**result["fedrec"]["candidate"]).fedrec_model()
        say("federated wrmf (reference loop, all devices every round), validation:")
        result["federated"] = tune_federated(tune_data, model, lrs[:1] if quick else lrs, rounds, say)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
