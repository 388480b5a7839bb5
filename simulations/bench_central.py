"""Centralized fit time and quality beside the peers, in one run: ``python -m simulations.bench_central``.

E1 (ML-100K fold 1, RMSE): fedrec's biased MF by ALS (``ALS_PRESETS["E1"]``)
against Surprise's ``SVD`` with its defaults. R1 (ML-100K leave-last-out,
HR@10 / NDCG@10): fedrec's full-catalogue implicit model by ALS
(``ALS_PRESETS["R1"]``) against implicit's ``AlternatingLeastSquares`` with
the settings its own validation grid chose (:data:`IMPLICIT_R1`, from
``simulations.tune_implicit``, with the same recency weights as values). ``--sgd`` adds fedrec's SGD trainers with the
protocol presets (the slower reference). Fit times are medians over
``--repeats`` fits, one thread each; the ratio column divides by the peer's
time from the same run. ``--json`` prints exactly one JSON object.
"""

from __future__ import annotations

from simulations.peers import single_thread

single_thread()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any  # noqa: E402

from fedrec.data.interactions import Dataset  # noqa: E402
from fedrec.data.registry import DATA_DIR_ENV, load_dataset  # noqa: E402
from fedrec.metrics.evaluate import evaluate  # noqa: E402
from fedrec.runconfig import protocol_preset  # noqa: E402
from fedrec.train.als import confidence_weights  # noqa: E402
from fedrec.train.central import (  # noqa: E402
    ALS_PRESETS,
    CENTRAL_PRESETS,
    train_central,  # noqa: E402
)
from simulations import peers  # noqa: E402

#: implicit's ALS on ML-100K R1, chosen by ``simulations.tune_implicit`` on validation.
IMPLICIT_R1: dict[str, Any] = {"factors": 64, "regularization": 30.0, "alpha": 3.0, "iterations": 15}

Row = dict[str, Any]


def _timed(fit: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    times, fitted = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        fitted = fit()
        times.append(time.perf_counter() - start)
    return fitted, statistics.median(times)


def _fedrec_row(data: Dataset, protocol: str, name: str, model: Any, trainer: Any, repeats: int) -> Row:
    fitted, seconds = _timed(lambda: train_central(data.train, model, trainer), repeats)
    metrics = evaluate(data, protocol, predict=fitted.predict, score_block=fitted.score_block)
    return {"protocol": protocol, "library": "fedrec", "model": name, "fit_s": seconds, **metrics}


def e1_rows(data_dir: str, repeats: int, sgd: bool) -> list[Row]:
    data = load_dataset("ml-100k", data_dir=data_dir, protocol="E1", fold=1)
    model, trainer = ALS_PRESETS["E1"]
    rows = [_fedrec_row(data, "E1", f"biased MF, ALS, dim {model.dim}", model, trainer, repeats)]
    if sgd:
        rows.append(_fedrec_row(data, "E1", "biased MF, SGD (E1 preset)", protocol_preset("E1").model,
                                CENTRAL_PRESETS["E1"], 1))
    if "scikit-surprise" in peers.missing():
        return rows
    assert data.rating_scale is not None
    fits = [peers.surprise_svd(data.train, data.rating_scale) for _ in range(repeats)]
    fit = fits[-1]
    rows.append({"protocol": "E1", "library": "surprise", "model": "SVD (defaults)",
                 "fit_s": statistics.median(f.seconds for f in fits),
                 **evaluate(data, "E1", predict=fit.predict, score_block=fit.score_block)})
    return rows


def r1_rows(data_dir: str, repeats: int, sgd: bool) -> list[Row]:
    data = load_dataset("ml-100k", data_dir=data_dir, protocol="R1")
    model, trainer = ALS_PRESETS["R1"]
    rows = [_fedrec_row(data, "R1", f"wrmf (full catalogue), ALS, dim {model.dim}", model, trainer, repeats)]
    if sgd:
        rows.append(_fedrec_row(data, "R1", "sampled logistic, SGD (R1 preset)", protocol_preset("R1").model,
                                CENTRAL_PRESETS["R1"], 1))
    if "implicit" in peers.missing():
        return rows
    weights = confidence_weights(data.train, replace(model, recency_boost=4.0))
    fits = [peers.implicit_als(data.train, **IMPLICIT_R1, weights=weights) for _ in range(repeats)]
    fit = fits[-1]
    rows.append({"protocol": "R1", "library": "implicit", "model": "AlternatingLeastSquares",
                 "fit_s": statistics.median(f.seconds for f in fits),
                 **evaluate(data, "R1", predict=fit.predict, score_block=fit.score_block)})
    return rows


def add_ratios(rows: list[Row]) -> None:
    """``fit_vs_peer``: each row's fit time over the peer's in the same protocol."""
    for protocol in ("E1", "R1"):
        peer = [r for r in rows if r["protocol"] == protocol and r["library"] != "fedrec"]
        for r in rows:
            if r["protocol"] == protocol and peer:
                r["fit_vs_peer"] = r["fit_s"] / peer[0]["fit_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV, ""))
    parser.add_argument("--repeats", type=int, default=3, help="fits per library; the median time is reported")
    parser.add_argument("--sgd", action="store_true", help="also fedrec's SGD trainers (one fit each, slow)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    absent = peers.missing()
    rows = e1_rows(args.data_dir, args.repeats, args.sgd) + r1_rows(args.data_dir, args.repeats, args.sgd)
    add_ratios(rows)
    result = {"rows": rows, "missing_peers": absent, "repeats": args.repeats}
    if args.json:
        print(json.dumps(result))
        return 0
    if absent:
        print(f"not installed (pip install -e .[peers]): {', '.join(absent)}", file=sys.stderr)
    print(f"{'protocol':<8} {'library':<9} {'model':<44} {'fit s':>7} {'x peer':>7}  quality")
    for r in rows:
        quality = (f"rmse {r['rmse']:.4f}" if r["protocol"] == "E1"
                   else f"hr@10 {r['hr@10']:.4f} ndcg@10 {r['ndcg@10']:.4f}")
        ratio = f"{r['fit_vs_peer']:.2f}" if "fit_vs_peer" in r else "-"
        print(f"{r['protocol']:<8} {r['library']:<9} {r['model']:<44} {r['fit_s']:>7.2f} {ratio:>7}  {quality}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
