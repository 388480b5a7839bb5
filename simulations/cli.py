"""``fedrec simulate``: a federated run on Flower's Simulation Engine, one device per user.

Runs in the current Python environment through ``flwr.simulation.run_simulation``
(Flower 1.42's ``flwr run`` would build a fresh environment per run with ``uv``,
which ignores this machine's CPU torch). Writes a run folder with the resolved
configuration (``config.toml``, re-runnable with ``--config``), ``metrics.jsonl``
(one line per round), the final ``checkpoint.npz``, ``metrics.png`` and
``report.md``. With ``--json`` it prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedrec.errors import FedRecError
from fedrec.runconfig import RunConfig, load_toml, parse_overrides

log = logging.getLogger("fedrec.simulate")

QUICKSTART = Path(__file__).resolve().parent / "conf" / "quickstart.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file of run-config keys (see simulations/conf/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one run-config key, e.g. --set dp.epsilon=8 (repeatable)")
    parser.add_argument("--dataset", help="shortcut for --set dataset=...")
    parser.add_argument("--data-dir", help="shortcut for --set data-dir=... (default: $FEDREC_DATA_DIR)")
    parser.add_argument("--protocol", choices=("E1", "R1"), help="shortcut for --set protocol=...")
    parser.add_argument("--fold", type=int, help="shortcut for --set fold=...")
    parser.add_argument("--rounds", type=int, help="shortcut for --set rounds=...")
    parser.add_argument("--split", help="shortcut for --set split=... (protocol, random-one, random-fraction, "
                                        "leave-last, files; README 'Your own data')")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: runs/<time>-<dataset>-<protocol>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the final metrics")
    parser.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="run the devices on a running Ray cluster (ray start --head ...) instead of a local Ray")


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """File, then shortcuts, then ``--set``; validated before anything runs.

    With no ``--config``, no ``--dataset`` and no ``--set`` the file is
    ``conf/quickstart.toml``: the command with no arguments is a first look that
    finishes in a few minutes. Any ``--set`` starts from the plain defaults instead,
    so an explicit configuration never inherits the quick-look settings.
    """
    quick = args.dataset is None and not args.overrides
    config = args.config or (QUICKSTART if quick else None)
    flat: dict[str, Any] = load_toml(config) if config else {}
    shortcuts = {"dataset": args.dataset, "data-dir": args.data_dir, "protocol": args.protocol,
                 "fold": args.fold, "rounds": args.rounds, "split": args.split}
    flat.update({k: v for k, v in shortcuts.items() if v is not None})
    flat.update(parse_overrides(args.overrides))
    env_dir = os.environ.get("FEDREC_DATA_DIR")
    if env_dir and not flat.get("data-dir") and flat.get("dataset", "synthetic") != "synthetic":
        flat["data-dir"] = env_dir
    return RunConfig.from_flat(flat)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.resume and args.run_dir is None:
        raise FedRecError("--resume needs --run-dir (the folder of the run to continue)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or Path("runs") / f"{stamp}-{cfg.data.dataset}-{cfg.data.protocol}"
    from .runner import simulate, validate

    validate(cfg)
    with _progress(cfg, enabled=not args.json) as on_round:
        result = simulate(cfg, run_dir, resume=args.resume, on_round=on_round, verbose=args.verbose,
                          ray_address=args.ray_address)
    out = {**_finite(result.final), "rounds": result.rounds, "seconds": result.seconds,
           "run_dir": str(result.run_dir), "dataset": cfg.data.dataset, "protocol": cfg.data.protocol,
           "dp_unit": cfg.dp.unit}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"run folder: {result.run_dir}")
        for key, value in out.items():
            if isinstance(value, float):
                print(f"  {key:<12} {value:.4f}")
    return 0


@contextlib.contextmanager
def _progress(cfg: RunConfig, *, enabled: bool) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """A rich progress bar over rounds showing the latest metrics (stderr, so --json stays clean)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    shown = ("rmse", "mae", "hr@10", "ndcg@10", "epsilon", "dropouts")
    columns = (TextColumn("round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[latest]}"))
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("rounds", total=cfg.fed.rounds, latest="")

        def on_round(row: dict[str, Any]) -> None:
            latest = " ".join(f"{k} {row[k]:.4f}" if isinstance(row[k], float) else f"{k} {row[k]}"
                              for k in shown if k in row)
            bar.update(task, completed=row["round"], latest=latest or bar.tasks[task].fields["latest"])

        yield on_round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedrec simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except FedRecError as exc:
        print(f"fedrec simulate: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))}

