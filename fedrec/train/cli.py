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
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.registry import DATA_DIR_ENV, DATASET_NAMES, check_recency, load_dataset
from fedrec.errors import FedRecError
from fedrec.metrics.evaluate import baseline_metrics, evaluate
from fedrec.runconfig import RunConfig, load_toml, parse_overrides
from fedrec.train.central import ALS_PRESETS, CENTRAL_PRESETS, train_central

SHORTCUTS: dict[str, str] = {
    "dataset": "dataset", "data_dir": "data-dir", "protocol": "protocol", "dim": "model.dim", "reg": "model.reg",
    "seed": "seed", "split": "split", "sep": "csv.sep", "user_col": "csv.user-col", "item_col": "csv.item-col",
    "rating_col": "csv.rating-col", "timestamp_col": "csv.timestamp-col", "weight_col": "csv.weight-col",
    "test_file": "split.test-file",
}
"""CLI shortcut (argparse dest) -> the run-config key it sets; ``--set`` and ``--config`` take every key."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file of run-config keys (the same as fedrec simulate)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one run-config key, e.g. --set csv.rating-col=stars (repeatable)")
    parser.add_argument("--dataset", choices=DATASET_NAMES, help="shortcut for --set dataset=... (default synthetic)")
    parser.add_argument("--data-dir", help=f"MovieLens root or folder; for csv the file or a folder holding "
                                           f"one data file (default: ${DATA_DIR_ENV})")
    parser.add_argument("--protocol", choices=("E1", "R1"), help="shortcut for --set protocol=... (default E1)")
    parser.add_argument("--fold", help="fold 1..5 (ML-100K also a, b), or 'all' for the mean over five folds")
    parser.add_argument("--split", help="shortcut for --set split=... (protocol, random-one, random-fraction, "
                                        "leave-last, files)")
    parser.add_argument("--test-file", help="shortcut for --set split.test-file=... (with --split files)")
    parser.add_argument("--sep", help="shortcut for --set csv.sep=... (auto, tab, ',', '::', ...)")
    for role in ("user", "item", "rating", "timestamp", "weight"):
        parser.add_argument(f"--{role}-col", help=f"shortcut for --set csv.{role}-col=... (name or 0-based index)")
    parser.add_argument("--dim", type=int, help="embedding dimension (default: protocol preset)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--reg", type=float)
    parser.add_argument("--solver", choices=("sgd", "als"), default="sgd",
                        help="als: the ALS presets (E1 biased MF; R1 the full-catalogue 'wrmf' model), "
                             "several times faster")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """File, then shortcuts, then ``--set``, then ``$FEDREC_DATA_DIR``: as ``fedrec simulate`` does."""
    flat: dict[str, Any] = load_toml(args.config) if args.config else {}
    for dest, key in SHORTCUTS.items():
        value = getattr(args, dest)
        if value is not None:
            flat[key] = parse_overrides([f"{key}={value}"])[key] if dest.endswith("_col") else value
    flat.update(parse_overrides(args.overrides))
    if args.fold is not None and args.fold.isdigit():
        flat["fold"] = int(args.fold)
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir and not flat.get("data-dir") and flat.get("dataset", "synthetic") != "synthetic":
        flat["data-dir"] = env_dir
    return RunConfig.from_flat(flat)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    spec, model = cfg.data, cfg.model
    trainer = CENTRAL_PRESETS[spec.protocol]
    if args.solver == "als":
        model, trainer = ALS_PRESETS[spec.protocol]
        model = dataclasses.replace(model, **_given(dim=args.dim, reg=args.reg))
    trainer = dataclasses.replace(trainer, seed=cfg.fed.seed, **_given(epochs=args.epochs, lr=args.lr))
    folds: list[int | str] = [1, 2, 3, 4, 5] if args.fold == "all" else [spec.fold]
    if args.fold in ("a", "b"):
        folds = [args.fold]
    start = time.perf_counter()
    per_fold = []
    for fold in folds:
        t0 = time.perf_counter()
        data = load_dataset(spec.dataset, data_dir=spec.data_dir or None, protocol=spec.protocol,  # type: ignore[arg-type]  # E1/R1, checked by runconfig
                            fold=fold, synthetic=spec.synthetic, csv=spec.csv, split=spec.split)
        check_recency(data, recency_boost=model.recency_boost)
        fitted = train_central(data.train, model, trainer)
        metrics = evaluate(data, spec.protocol, predict=fitted.predict, score_block=fitted.score_block)
        metrics["fit_seconds"] = time.perf_counter() - t0
        base = {f"baseline_{k}": v for k, v in baseline_metrics(data, spec.protocol).items()}
        per_fold.append({"fold": fold, **metrics, **base})
    result = _mean(per_fold)
    result.update(dataset=spec.dataset, protocol=spec.protocol, split=spec.split.kind, dim=model.dim,
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
