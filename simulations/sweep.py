"""``fedrec sweep privacy``: the privacy/utility trade-off as a table and a plot.

For each protocol (E1: rating prediction, scored by RMSE; R1: ranking, scored
by HR@10) and each privacy unit (``rating``, ``user``) the sweep trains once per
target epsilon in ``{1, 2, 4, 8, 16, inf}`` and once without DP, then writes
into the output folder:

* ``sweep.csv``: one row per run (target and spent epsilon, delta, unit,
  accountant, metrics, wall time, engine);
* ``sweep.md``: the same as Markdown tables, one per protocol;
* ``sweep.png``: epsilon against RMSE (E1) and against HR@10 (R1), one line
  per unit, the non-private run as a horizontal line.

Rating-level DP trains the explicit rating model only, so its R1 row says so
instead of a number. User-level runs use ``delta = 1/N`` for ``N`` users,
rating-level runs ``delta = 1e-5`` per device.

``--engine reference`` (the default) runs :func:`fedrec.federated.reference.train_in_process`
in this process: the same device and server-policy code as the Flower apps,
without the per-message cost. ``--engine flower`` runs every point on Flower's
Simulation Engine (slow: minutes per point). ``--quick`` is a small synthetic
population for a smoke test (about a minute).

Examples::

    fedrec sweep privacy --quick --out runs/sweep-quick
    fedrec sweep privacy --dataset synthetic --set synthetic.n-users=10000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.data.registry import check_recency
from fedrec.data.spec import load_run_dataset
from fedrec.errors import FedRecError
from fedrec.runconfig import RunConfig, Scalar, load_toml, parse_overrides
from fedrec.store.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger("fedrec.sweep")

EPSILONS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
UNITS: tuple[str, ...] = ("rating", "user")
PROTOCOLS: tuple[str, ...] = ("E1", "R1")
SCORE = {"E1": "rmse", "R1": "hr@10"}
RATING_DELTA = 1e-5

#: Per-unit settings of the sweep runs (any key can be overridden with --set, per unit with a prefix).
#: Rating-level: the ML-100K validation choice (simulations/conf/dp-rating.toml); user-level: the
#: choice of simulations/conf/dp-user.toml with a larger cohort for the default 2,000 users. The
#: non-private run samples the same expected cohort as the user-level runs.
UNIT_SETTINGS: dict[str, dict[str, Scalar]] = {
    "off": {"cohort": 0.2},
    "rating": {"rounds": 10, "model.dim": 4, "local.lr": 0.1, "strategy.server-lr": 20.0, "dp.clip": 1.0,
               "dp.batch-size": 4, "dp.local-epochs": 1},
    "user": {"dp.cohort-rate": 0.2, "dp.clip": 1.0, "strategy.optimizer": "adagrad", "strategy.server-lr": 0.2},
}

#: The --quick population: small, every user with the same number of ratings (one calibration).
QUICK: dict[str, Scalar] = {"dataset": "synthetic", "synthetic.n-users": 300, "synthetic.n-items": 60,
                            "synthetic.mean-interactions": 12, "synthetic.activity-sigma": 0.0,
                            "synthetic.min-interactions": 5, "model.dim": 8, "rounds": 5, "eval-every": 5}
QUICK_UNIT: dict[str, dict[str, Scalar]] = {"off": {"cohort": 0.5}, "rating": {"rounds": 5, "model.dim": 4},
                                            "user": {"dp.cohort-rate": 0.5}}

FIELDS = ("protocol", "unit", "epsilon_target", "epsilon", "delta", "accountant", "noise_multiplier", "rounds",
          "rmse", "mae", "hr@10", "ndcg@10", "seconds", "engine", "status")


@dataclass(frozen=True)
class Point:
    """One run of the sweep."""

    protocol: str
    unit: str
    epsilon: float | None

    @property
    def label(self) -> str:
        eps = "-" if self.epsilon is None else _fmt_eps(self.epsilon)
        return f"{self.protocol}/{self.unit}/eps={eps}"


Runner = Callable[[RunConfig], list[dict[str, Any]]]


def points(epsilons: Sequence[float] = EPSILONS, protocols: Sequence[str] = PROTOCOLS,
           units: Sequence[str] = UNITS) -> list[Point]:
    """Every run: per protocol one non-private run, then each unit at each epsilon."""
    out = []
    for protocol in protocols:
        out.append(Point(protocol, "off", None))
        out += [Point(protocol, unit, eps) for unit in units for eps in epsilons]
    return out


def point_config(point: Point, base: dict[str, Scalar], *, quick: bool, population: int | None = None,
                 unit_overrides: dict[str, dict[str, Scalar]] | None = None) -> RunConfig:
    """The run configuration of ``point``: quick population, unit settings, ``base``, then the unit's overrides."""
    flat: dict[str, Scalar] = {**(QUICK if quick else {}), **UNIT_SETTINGS[point.unit]}
    if quick:
        flat.update(QUICK_UNIT.get(point.unit, {}))
    flat.update(base)
    flat.update((unit_overrides or {}).get(point.unit, {}))
    flat["protocol"] = point.protocol
    if point.unit != "off":
        flat["dp.unit"] = point.unit
        flat["dp.epsilon"] = math.inf if point.epsilon is None else point.epsilon
        flat["dp.delta"] = 1.0 / population if point.unit == "user" and population else RATING_DELTA
    return RunConfig.from_flat(flat)


def reference_runner(cfg: RunConfig) -> list[dict[str, Any]]:
    """Train with the in-process reference loop."""
    from fedrec.federated.reference import train_in_process

    data = load_run_dataset(cfg.data)
    check_recency(data, recency_boost=cfg.model.recency_boost)
    _, history = train_in_process(data, cfg.model, cfg.fed, privacy=cfg.privacy_plan())
    return history


def flower_runner(out: Path) -> Runner:
    """Train on Flower's Simulation Engine, one run folder per point under ``out/runs``."""
    from .runner import simulate

    counter = iter(range(1_000_000))

    def run(cfg: RunConfig) -> list[dict[str, Any]]:
        run_dir = out / "runs" / f"{next(counter):03d}-{cfg.data.protocol}-{cfg.dp.unit}"
        return simulate(cfg, run_dir).history

    return run


def measure_sweep(base: dict[str, Scalar], out: Path, *, quick: bool = False, engine: str = "reference",
              epsilons: Sequence[float] = EPSILONS, protocols: Sequence[str] = PROTOCOLS,
              units: Sequence[str] = UNITS, unit_overrides: dict[str, dict[str, Scalar]] | None = None,
              runner: Runner | None = None, on_row: Callable[[dict[str, Any]], None] | None = None,
              ) -> list[dict[str, Any]]:
    """Run every point, then write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` into ``out``.

    ``unit_overrides`` maps a unit (``off``, ``rating``, ``user``) to keys set on its runs only.
    """
    out.mkdir(parents=True, exist_ok=True)
    run = runner or (reference_runner if engine == "reference" else flower_runner(out))
    rows = []
    for point in points(epsilons, protocols, units):
        row = _run_point(point, base, quick=quick, engine=engine, run=run, unit_overrides=unit_overrides or {})
        rows.append(row)
        if on_row:
            on_row(row)
    write_outputs(out, rows)
    return rows


def _run_point(point: Point, base: dict[str, Scalar], *, quick: bool, engine: str, run: Runner,
               unit_overrides: dict[str, dict[str, Scalar]]) -> dict[str, Any]:
    row: dict[str, Any] = {"protocol": point.protocol, "unit": point.unit,
                           "epsilon_target": point.epsilon, "engine": engine, "status": "ok"}
    if point.unit == "rating" and point.protocol != "E1":
        row["status"] = "n/a: rating-level DP-SGD trains the explicit rating model only"
        return row
    start = time.perf_counter()
    try:
        probe = point_config(Point(point.protocol, "off", None), base, quick=quick, unit_overrides=unit_overrides)
        population = load_run_dataset(probe.data).n_users
        cfg = point_config(point, base, quick=quick, population=population, unit_overrides=unit_overrides)
        history = run(cfg)
    except FedRecError as exc:
        row["status"] = f"failed: {exc}"
        log.warning("%s failed: %s", point.label, exc)
        return row
    final: dict[str, Any] = {}
    for h in history:
        final.update(h)
    row.update({k: final.get(k) for k in ("epsilon", "delta", "accountant", "noise_multiplier", "rmse", "mae",
                                          "hr@10", "ndcg@10")})
    row["rounds"] = int(final.get("round", 0))
    row["seconds"] = time.perf_counter() - start
    log.info("%s: %s", point.label, {k: row[k] for k in ("epsilon", SCORE[point.protocol])})
    return row


# --------------------------------------------------------------------------- outputs


def write_outputs(out: Path, rows: list[dict[str, Any]]) -> None:
    """``sweep.csv``, ``sweep.md`` and ``sweep.png``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_text(out / "sweep.md", markdown(rows))
    write_plot(out / "sweep.png", rows)


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per protocol: target epsilon against each unit's spent epsilon and score."""
    lines = ["# Privacy sweep", ""]
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        score = SCORE[protocol]
        mine = [r for r in rows if r["protocol"] == protocol]
        base = next((r for r in mine if r["unit"] == "off"), None)
        lines += [f"## {protocol} ({score})", ""]
        if base is not None and base.get(score) is not None:
            lines += [f"Without DP: {score} = {base[score]:.4f}.", ""]
        lines += ["| unit | target epsilon | spent epsilon | delta | accountant | sigma | rounds | "
                  f"{score} | seconds | status |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            if r["unit"] == "off":
                continue
            lines.append(f"| {r['unit']} | {_fmt_eps(r['epsilon_target'])} | {_fmt_num(r.get('epsilon'))} | "
                         f"{_fmt_num(r.get('delta'), '.2g')} | {r.get('accountant') or ''} | "
                         f"{_fmt_num(r.get('noise_multiplier'))} | {r.get('rounds', '')} | "
                         f"{_fmt_num(r.get(score))} | {_fmt_num(r.get('seconds'), '.1f')} | {r['status']} |")
        lines.append("")
    lines += ["Spent epsilon is what the accountant reports after the last round (rating-level: the largest "
              "over devices). sigma is the user-level noise multiplier; rating-level devices calibrate their own.",
              ""]
    return "\n".join(lines)


def write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """Epsilon (log scale, inf at the right end) against RMSE for E1 and HR@10 for R1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 3.8), squeeze=False)
    finite = sorted({float(r["epsilon_target"]) for r in rows
                     if r.get("epsilon_target") is not None and math.isfinite(r["epsilon_target"])}) or [1.0]
    inf_x = finite[-1] * 2.0
    for ax, protocol in zip(axes[0], protocols, strict=True):
        score = SCORE[protocol]
        mine = [r for r in rows if r["protocol"] == protocol]
        for unit in UNITS:
            pts = sorted((inf_x if math.isinf(r["epsilon_target"]) else r["epsilon_target"], r[score])
                         for r in mine if r["unit"] == unit and r.get(score) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{unit}-level DP")
        base = next((r for r in mine if r["unit"] == "off" and r.get(score) is not None), None)
        if base is not None:
            ax.axhline(base[score], color="grey", linestyle="--", label="no DP")
        ax.set_xscale("log", base=2)
        ticks = [*finite, inf_x]
        ax.set_xticks(ticks)
        ax.set_xticklabels([_fmt_eps(t) for t in finite] + ["inf"])
        ax.set_xlabel("epsilon")
        ax.set_ylabel(score)
        ax.set_title(f"{protocol}: epsilon vs {score}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _fmt_eps(eps: float | None) -> str:
    if eps is None:
        return "-"
    return "inf" if math.isinf(eps) else f"{eps:g}"


def _fmt_num(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return "" if value is None else value


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("privacy",), help="what to sweep")
    parser.add_argument("--quick", action="store_true", help="small synthetic population (about a minute)")
    parser.add_argument("--engine", choices=("reference", "flower"), default="reference",
                        help="in-process reference loop (default) or Flower's Simulation Engine")
    parser.add_argument("--dataset", help="dataset (default synthetic); ML-100K needs --data-dir or FEDREC_DATA_DIR")
    parser.add_argument("--data-dir", help="data root (default: $FEDREC_DATA_DIR)")
    parser.add_argument("--protocols", default="E1,R1", help="comma-separated protocols (default E1,R1)")
    parser.add_argument("--units", default="rating,user", help="comma-separated DP units (default rating,user)")
    parser.add_argument("--epsilons", default="1,2,4,8,16,inf", help="comma-separated targets (default 1..16,inf)")
    parser.add_argument("--config", type=Path, help="TOML file of run-config keys shared by every run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[UNIT:]KEY=VALUE",
                        help="run-config override for every run, or with a unit prefix (rating:, user:, off:) "
                             "for that unit's runs only (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/sweep-<time>)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list on stdout")


def base_config(args: argparse.Namespace) -> tuple[dict[str, Scalar], dict[str, dict[str, Scalar]]]:
    """Dataset and ``--set`` overrides shared by every point, and the per-unit ones."""
    import os

    base: dict[str, Scalar] = load_toml(args.config) if args.config else {}
    if args.dataset:
        base["dataset"] = args.dataset
    data_dir = args.data_dir or os.environ.get("FEDREC_DATA_DIR")
    if data_dir and base.get("dataset", "synthetic") != "synthetic" and not base.get("data-dir"):
        base["data-dir"] = data_dir
    per_unit: dict[str, dict[str, Scalar]] = {}
    for key, value in parse_overrides(args.overrides).items():
        unit, sep, name = key.partition(":")
        if not sep:
            base[key] = value
        elif unit in ("off", *UNITS):
            per_unit.setdefault(unit, {})[name] = value
        else:
            raise FedRecError(f"--set {key}: unit prefix must be one of off:, rating:, user:")
    return base, per_unit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedrec sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("fedrec.data").setLevel(logging.WARNING)
    try:
        epsilons = [math.inf if e.strip().lower() == "inf" else float(e) for e in args.epsilons.split(",")]
        protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
        units = [u.strip() for u in args.units.split(",") if u.strip()]
        for p in protocols:
            if p not in PROTOCOLS:
                raise FedRecError(f"--protocols: {p!r} is not one of {PROTOCOLS}")
        for u in units:
            if u not in UNITS:
                raise FedRecError(f"--units: {u!r} is not one of {UNITS}")
        out = args.out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        base, per_unit = base_config(args)
        rows = measure_sweep(base, out, quick=args.quick, engine=args.engine, epsilons=epsilons, protocols=protocols,
                         units=units, unit_overrides=per_unit)
    except (FedRecError, ValueError) as exc:
        print(f"fedrec sweep: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        print(f"sweep folder: {out}  (sweep.csv, sweep.md, sweep.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
