"""Flower ServerApp: builds the run configuration and hands the Grid to the round loop.

``app`` is the component ``flwr run`` loads (its configuration comes from
``[tool.flwr.app.config]`` and ``--run-config``); :func:`make_server_app` is
what ``fedrec simulate`` uses to run with an already resolved configuration, a
run folder and a progress callback.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.data.spec import load_run_dataset
from fedrec.deploy.runspec import from_run_config, write_status
from fedrec.errors import FedRecError
from fedrec.runconfig import RunConfig

from .loop import Catalogue, RoundCallback, RunResult, run_server


def catalogue_for(cfg: RunConfig) -> Catalogue:
    """Catalogue size and rating scale: public facts of the item catalogue."""
    data = load_run_dataset(cfg.data)
    return Catalogue(data.n_items, data.rating_scale)


def make_server_app(cfg: RunConfig, *, run_dir: Path | None = None, on_round: RoundCallback | None = None,
                    resume: bool = False, results: list[RunResult] | None = None) -> ServerApp:
    """A ServerApp bound to a resolved configuration (used by the simulation runner)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_server(grid, cfg, catalogue_for(cfg), run_dir=run_dir, on_round=on_round, resume=resume)
        if results is not None:
            results.append(result)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployed ServerApp: ``fedrec server run/resume`` ship the configuration in an envelope."""
    cfg, run_dir, resume = from_run_config(dict(context.run_config))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_status(run_dir, "running", flower_run=context.run_id, rounds=cfg.fed.rounds, resume=resume)
    try:
        result = run_server(grid, cfg, catalogue_for(cfg), run_dir=run_dir, resume=resume)
    except FedRecError as exc:
        write_status(run_dir, "failed", flower_run=context.run_id, rounds=cfg.fed.rounds, error=str(exc))
        raise
    write_status(run_dir, "finished", flower_run=context.run_id, rounds=cfg.fed.rounds, round=result.state.round)
