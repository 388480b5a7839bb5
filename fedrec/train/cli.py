"""``fedrec train-central``: the centralized, non-private baseline on a protocol.

Prints the protocol's metrics next to the trivial baseline (global mean for
E1, popularity for R1). ``--fold all`` runs the five ML-100K folds (or five
random folds elsewhere) and reports their mean. With ``--json`` exactly one
JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np

from fedrec.data.registry import DATA_DIR_ENV, DATASET_NAMES, load_dataset
from fedrec.errors import FedRecError
from fedrec.metrics.evaluate import baseline_metrics, evaluate
from fedrec.runconfig import protocol_preset
from fedrec.train.central import CENTRAL_PRESETS, train_central


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic", choices=DATASET_NAMES)
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV),
                        help=f"MovieLens root or folder (default: ${DATA_DIR_ENV})")
    parser.add_argument("--protocol", default="E1", choices=("E1", "R1"))
    parser.add_argument("--fold", default="1", help="fold 1..5, or 'all' for the mean over five folds")
    parser.add_argument("--dim", type=int, help="embedding dimension (default: protocol preset)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--reg", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    model = protocol_preset(args.protocol).model
    trainer = CENTRAL_PRESETS[args.protocol]
    model = dataclasses.replace(model, **_given(dim=args.dim, reg=args.reg))
    trainer = dataclasses.replace(trainer, seed=args.seed, **_given(epochs=args.epochs, lr=args.lr))
    folds = [1, 2, 3, 4, 5] if args.fold == "all" else [args.fold]
    start = time.perf_counter()
    per_fold = []
    for fold in folds:
        t0 = time.perf_counter()
        data = load_dataset(args.dataset, data_dir=args.data_dir, protocol=args.protocol, fold=fold)
        fitted = train_central(data.train, model, trainer)
        metrics = evaluate(data, args.protocol, predict=fitted.predict, score_block=fitted.score_block)
        metrics["fit_seconds"] = time.perf_counter() - t0
        base = {f"baseline_{k}": v for k, v in baseline_metrics(data, args.protocol).items()}
        per_fold.append({"fold": fold, **metrics, **base})
    result = _mean(per_fold)
    result.update(dataset=args.dataset, protocol=args.protocol, dim=model.dim,
                  seconds=time.perf_counter() - start)
    if len(per_fold) > 1:
        result["folds"] = per_fold
    _print(result, args.json)
    return 0


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in rows[0] if k != "fold"]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    print(f"{result['dataset']} {result['protocol']} (dim {result['dim']}), {result['seconds']:.1f}s")
    for key, value in result.items():
        if key.startswith("baseline_") or not isinstance(value, float) or key in ("seconds", "dim"):
            continue
        base = result.get(f"baseline_{key}")
        extra = f"   baseline {base:.4f}" if base is not None else ""
        print(f"  {key:<12} {value:.4f}{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedrec train-central", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FedRecError as exc:
        print(f"fedrec train-central: error: {exc}", file=sys.stderr)
        return 2
