"""Run a resolved configuration on Flower's Simulation Engine and write the run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.data.partition import n_partitions
from fedrec.data.registry import check_recency
from fedrec.data.spec import shared_run_dataset
from fedrec.errors import CheckpointError, ConfigError
from fedrec.runconfig import RunConfig, dump_toml
from fedrec.store.atomic import atomic_write_text
from fedrec.store.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedrec.store.device_table import DEVICE_STATE_FILE, DeviceStateTable, remove_table

from .report import write_plot, write_report

log = logging.getLogger(__name__)

RoundHook = Callable[[dict[str, Any]], None]
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class SimulationResult:
    """Final metrics, per-round history and where everything was written."""

    final: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path
    seconds: float
    rounds: int = 0
    """Rounds the run has completed in total (a resumed run counts the rounds before the resume)."""


def population(cfg: RunConfig) -> int:
    """Number of simulated devices: one per user, or per group of ``users-per-client``.

    Reads the size from the run's mapped dataset store, which the first call
    builds: the data is made once, here, and every worker maps it.
    """
    data = shared_run_dataset(cfg.data)
    return n_partitions(data.n_users, users_per_client=cfg.data.users_per_client)


def validate(cfg: RunConfig) -> int:
    """Everything that can fail before round 1 fails here (data present, cohort fits)."""
    check_recency(shared_run_dataset(cfg.data), recency_boost=cfg.model.recency_boost)
    n = population(cfg)
    size = cfg.fed.cohort_size(n)
    if cfg.secagg.enabled:
        check_secagg_threshold(cfg, size)
        if cfg.secagg.authority_key:
            raise ConfigError(f"secagg.authority-key: {cfg.secagg.authority_key!r} is for deployed runs; a simulation "
                              "enrols its devices with its own authority, which the server verifies them against")
    return n


def check_secagg_threshold(cfg: RunConfig, cohort: int) -> None:
    """Refuse, before Flower starts and naming the key, a ``secagg.threshold`` the cohort cannot meet, or
    security settings weaker than the devices' floor (which they would refuse round after round)."""
    from fedrec.server.secagg import neighbours_for, threshold_for

    from fedrec.secagg import SecAggError, resolve_threshold
    from fedrec.secagg.graph import DEFAULT_SECURITY, check_security, check_threshold

    neighbours = neighbours_for(cfg.secagg, cohort)
    k = cohort - 1 if neighbours == "all" else int(neighbours)
    try:
        t = resolve_threshold(threshold_for(cfg.secagg), n_participants=cohort, neighbours=neighbours,
                              params=cfg.secagg.security)
        check_threshold(t, k, allow_minority_threshold=False)
    except SecAggError as exc:
        raise ConfigError(f"secagg.threshold: {cfg.secagg.threshold:g} does not fit a cohort of {cohort} "
                          f"devices with {k} neighbours each: {exc}") from exc
    try:  # what every device checks against its own floor, whatever the server's settings
        check_security(cohort, k, t, params=DEFAULT_SECURITY)
    except SecAggError as exc:
        raise ConfigError(f"secagg.sigma/eta/corrupt/dropout: {cfg.secagg.security} gives k={k}, t={t} for "
                          f"{cohort} devices, below the devices' own floor; they would refuse every round: {exc}"
                          ) from exc


def simulate(cfg: RunConfig, run_dir: Path, *, resume: bool = False, on_round: RoundHook | None = None,
             verbose: bool = False, num_cpus_per_client: float = 1.0, ray_address: str | None = None,
             client_app: Any = None) -> SimulationResult:
    """Run every round of ``cfg`` with one virtual Flower SuperNode per device.

    ``ray_address`` (``host:port`` of a running Ray cluster, see README "Scaling
    out") runs the devices on that cluster's nodes instead of a Ray started on
    this machine; ``client_app`` replaces fedrec's ClientApp (tests wrap it; it must hand the
    devices ``cfg``, as ``make_client_app(run_config=cfg)`` does).
    The runner plays the enrolment authority: its ClientApp's devices get
    identities it certifies, and the server verifies their advertisements
    under its public key (with a ``client_app`` of the caller's, only the
    devices verify them).
    """
    from fedrec.client.app import make_client_app
    from fedrec.client.persist import PersistDeviceState
    from fedrec.client.secagg import IdentityProvider
    from fedrec.server.app import make_server_app
    from flwr.simulation import run_simulation

    from fedrec.secagg.crypto.identity import SimulationAuthority

    n_devices = validate(cfg)
    table = run_dir / DEVICE_STATE_FILE
    if resume:
        DeviceStateTable(table).truncate_after(prepare_resume(cfg, run_dir))
    else:
        remove_table(table)
    # The engine registers its nodes while the ServerApp starts: wait for all of them, or the first
    # cohorts would be drawn from the part of a large population registered so far.
    cfg = dataclasses.replace(cfg, min_clients=max(cfg.min_clients, n_devices))
    if os.environ.get("FEDREC_LINKSTATE_INDEX", "1") != "0":
        from .flower_linkstate import install

        install()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", to_toml(cfg.flat))
    if not resume:
        (run_dir / METRICS).unlink(missing_ok=True)
    results: list[Any] = []
    errors: list[Any] = []
    start = time.perf_counter()
    _quiet_flower(verbose)
    authority = SimulationAuthority.generate() if client_app is None else None
    if authority is not None:
        client_app = make_client_app(mods=[PersistDeviceState(str(table))], run_config=cfg, seeded_noise=True,
                                     identities=IdentityProvider(authority))
    run_simulation(
        server_app=make_server_app(cfg, run_dir=run_dir, on_round=on_round, resume=resume, results=results,
                                   errors=errors, authority_key=None if authority is None else authority.public_key),
        client_app=client_app,
        num_supernodes=n_devices,
        backend_config={"client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": 0.0},
                        "init_args": {"logging_level": "INFO" if verbose else "ERROR", "log_to_driver": verbose,
                                      **({"address": ray_address} if ray_address else {})}},
        verbose_logging=verbose,
    )
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    if not results:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    history = read_history(run_dir / METRICS) if resume else results[0].history
    final = final_metrics(history)
    write_plot(run_dir / "metrics.png", history)
    write_report(run_dir / "report.md", cfg, history, final, seconds)
    return SimulationResult(final, history, run_dir, seconds, rounds=results[0].state.round)


def prepare_resume(cfg: RunConfig, run_dir: Path) -> int:
    """Check the run folder can be resumed before Flower starts; returns the checkpoint's round.

    The checkpoint must be intact and hold a table of this configuration's
    shape (a :class:`~fedrec.errors.CheckpointError` naming the file
    otherwise). ``metrics.jsonl`` is made to end at the checkpoint's round:
    lines past it are dropped, and the checkpoint's own line is restored if a
    crash fell between writing the checkpoint and the line.
    """
    data = shared_run_dataset(cfg.data)
    state, extra = load_checkpoint(run_dir / CHECKPOINT_FILE, n_items=data.n_items, dim=cfg.model.dim)
    history = [r for r in read_history(run_dir / METRICS) if int(r["round"]) <= state.round]
    row = extra.get("row")
    if isinstance(row, dict) and (not history or int(history[-1]["round"]) < state.round):
        history.append(row)
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))
    return state.round


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (empty when the file is missing)."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}:{number}:{exc.colno}: not a JSON metrics line: {exc.msg}") from exc
    return rows


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
