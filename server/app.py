"""Flower ServerApp: builds the run configuration and hands the Grid to the round loop.

``app`` is the component ``flwr run`` loads (its configuration comes from
``[tool.flwr.app.config]`` and ``--run-config``); :func:`make_server_app` is
what ``fedrec simulate`` uses to run with an already resolved configuration, a
run folder and a progress callback.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.data.registry import check_recency
from fedrec.data.spec import shared_run_dataset
from fedrec.deploy.runspec import from_run_config, write_status
from fedrec.errors import FedRecError
from fedrec.runconfig import RunConfig
from fedrec.secagg.crypto.identity import load_authority_key

from .loop import Catalogue, RoundCallback, RunResult, train_over_grid

log = logging.getLogger("flwr.fedrec")


def catalogue_for(cfg: RunConfig) -> Catalogue:
    """Catalogue size and rating scale: public facts of the item catalogue (read from the mapped store)."""
    data = shared_run_dataset(cfg.data)
    return Catalogue(data.n_items, data.rating_scale)


def authority_key_for(cfg: RunConfig) -> bytes | None:
    """The enrolment authority's public key named by ``secagg.authority-key``, for a secure run (else ``None``).

    Raises
    ------
    SecAggConfigError
        The file is missing or does not hold a valid 32-byte Ed25519 public key (naming the file).
    """
    if not cfg.secagg.enabled:
        return None
    if not cfg.secagg.authority_key:
        log.warning("secure aggregation without secagg.authority-key: only the devices verify key advertisements")
        return None
    key = load_authority_key(cfg.secagg.authority_key)
    log.info("the server verifies key advertisements under the enrolment authority in %s", cfg.secagg.authority_key)
    return key


def make_server_app(cfg: RunConfig, *, run_dir: Path | None = None, on_round: RoundCallback | None = None,
                    resume: bool = False, results: list[RunResult] | None = None,
                    errors: list[FedRecError] | None = None, authority_key: bytes | None = None) -> ServerApp:
    """A ServerApp bound to a resolved configuration (used by the simulation runner).

    A :class:`FedRecError` the run raises is appended to ``errors`` (when given) so
    the caller can report it: Flower's simulation only logs what its ServerApp raises.
    ``authority_key`` is the simulation's enrolment authority (the runner's), so the
    server verifies advertisements as a deployment's does.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result = train_over_grid(grid, cfg, catalogue_for(cfg), run_dir=run_dir, on_round=on_round, resume=resume,
                                 authority_key=authority_key)
        except FedRecError as exc:
            if errors is None:
                raise
            errors.append(exc)
            return
        if results is not None:
            results.append(result)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployed ServerApp: ``fedrec server run/resume`` ship the configuration in an envelope."""
    cfg, run_dir, resume = from_run_config(dict(context.run_config))
    check_recency(shared_run_dataset(cfg.data), recency_boost=cfg.model.recency_boost)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_status(run_dir, "running", flower_run=context.run_id, rounds=cfg.fed.rounds, resume=resume)
    try:
        result = train_over_grid(grid, cfg, catalogue_for(cfg), run_dir=run_dir, resume=resume,
                             authority_key=authority_key_for(cfg))
    except FedRecError as exc:
        write_status(run_dir, "failed", flower_run=context.run_id, rounds=cfg.fed.rounds, error=str(exc))
        raise
    write_status(run_dir, "finished", flower_run=context.run_id, rounds=cfg.fed.rounds, round=result.state.round)
