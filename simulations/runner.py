"""Run a resolved configuration on Flower's Simulation Engine and write the run folder."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.data.partition import partition_users
from fedrec.data.spec import load_run_dataset
from fedrec.runconfig import RunConfig, dump_toml
from fedrec.store.atomic import atomic_write_text

from .report import write_plot, write_report

log = logging.getLogger(__name__)

RoundHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SimulationResult:
    """Final metrics, per-round history and where everything was written."""

    final: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path
    seconds: float


def population(cfg: RunConfig) -> int:
    """Number of simulated devices: one per user, or per group of ``users-per-client``."""
    data = load_run_dataset(cfg.data)
    return len(partition_users(data.n_users, users_per_client=cfg.data.users_per_client, seed=cfg.fed.seed))


def validate(cfg: RunConfig) -> int:
    """Everything that can fail before round 1 fails here (data present, cohort fits)."""
    n = population(cfg)
    cfg.fed.cohort_size(n)
    return n


def simulate(cfg: RunConfig, run_dir: Path, *, resume: bool = False, on_round: RoundHook | None = None,
             verbose: bool = False, num_cpus_per_client: float = 1.0) -> SimulationResult:
    """Run every round of ``cfg`` with one virtual Flower SuperNode per device."""
    from fedrec.client.app import make_client_app
    from fedrec.server.app import make_server_app
    from flwr.simulation import run_simulation

    n_devices = validate(cfg)
    if os.environ.get("FEDREC_LINKSTATE_INDEX", "1") != "0":
        from .flower_linkstate import install

        install()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", to_toml(cfg.flat))
    if not resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    results: list[Any] = []
    start = time.perf_counter()
    _quiet_flower(verbose)
    run_simulation(
        server_app=make_server_app(cfg, run_dir=run_dir, on_round=on_round, resume=resume, results=results),
        client_app=make_client_app(),
        num_supernodes=n_devices,
        backend_config={"client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": 0.0},
                        "init_args": {"logging_level": "INFO" if verbose else "ERROR", "log_to_driver": verbose}},
        verbose_logging=verbose,
    )
    seconds = time.perf_counter() - start
    if not results:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    history = results[0].history
    final = final_metrics(history)
    write_plot(run_dir / "metrics.png", history)
    write_report(run_dir / "report.md", cfg, history, final, seconds)
    return SimulationResult(final, history, run_dir, seconds)


_PER_ROUND = ("sampled", "survivors", "dropouts", "seconds", "train_seconds", "aggregate_seconds",
              "checkpoint_seconds")


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluated value of each metric, and the number of rounds run."""
    out: dict[str, Any] = {}
    for row in history:
        out.update({k: v for k, v in row.items() if k not in _PER_ROUND})
    return out


def to_toml(flat: dict[str, Any] | Any) -> str:
    """Flat run config as TOML with quoted dotted keys (``"dp.epsilon" = 8``), loadable by ``--config``."""
    return dump_toml(flat, comment="resolved fedrec run configuration; re-run: fedrec simulate --config config.toml")


def _quiet_flower(verbose: bool) -> None:
    """Keep the terminal for the progress bar: Flower's INFO lines and its notice that
    ``run_simulation`` is deprecated (it is still the in-environment engine in 1.42) only with --verbose."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
