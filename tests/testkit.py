"""Helpers shared by several test folders: a recording Flower grid, a whole run on Flower's Simulation Engine, an
empty in-memory Flower run, the Opacus epsilon reference, a byte chi-square, the output of a writer killed with
SIGKILL.

``tests/`` is on ``sys.path`` (its ``conftest.py``), so any test imports this module as ``testkit``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from fedrec.client.app import make_client_app
from fedrec.server.app import catalogue_for
from fedrec.server.loop import RunResult, train_over_grid
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # type: ignore[attr-defined]
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.simulation.run_simulation import NOOP_FEDERATION_ID, Run
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from opacus.accountants import IAccountant, RDPAccountant

from fedrec.runconfig import RunConfig

#: Simulation Engine settings of the tests: one CPU per device, Ray quiet.
SIM_BACKEND: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                               "init_args": {"logging_level": "ERROR", "log_to_driver": False}}


class RecordingGrid:
    """A Grid that keeps every message the server sent and every reply a device sent (what crossed the wire)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.sent.extend(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies


def train_on_simulation_engine(cfg: RunConfig, n_devices: int, *, client_app: ClientApp | None = None,
                               grid_type: Callable[[Grid], Any] = RecordingGrid) -> tuple[Any, RunResult]:
    """Every round of ``cfg`` (:func:`train_over_grid`) on Flower's Simulation Engine with ``n_devices`` SuperNodes.

    ``client_app`` defaults to fedrec's, handed ``cfg``. Returns the grid the server used, wrapped in
    ``grid_type`` (None if the ServerApp failed before it), and the run's result.
    """
    box: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        box["grid"] = grid_type(grid)
        box["result"] = train_over_grid(box["grid"], cfg, catalogue_for(cfg))

    run_simulation(server_app=app, client_app=client_app or make_client_app(run_config=cfg),
                   num_supernodes=n_devices, backend_config=SIM_BACKEND)
    return box.get("grid"), box["result"]


def in_memory_run(rng: np.random.Generator) -> tuple[LinkStateFactory, InMemoryLinkState, Run]:
    """An in-memory link state holding one empty run and no node, as Flower's simulation engine sets it up.

    Sets ``TaskIdentity`` to the run (what a Flower process does before it builds messages); callers that
    care restore it.
    """
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(run_id=int(rng.integers(1, 1 << 62)))
    run.federation_id = NOOP_FEDERATION_ID
    run.primary_task_id = int(rng.integers(1, 1 << 62))
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run.run_id, 1, SUPERLINK_NODE_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    return factory, state, run


def sigkill_output(proc: subprocess.Popen[str], delay: float) -> str:
    """What a writer printed before it was killed with SIGKILL ``delay`` seconds after it said ``open``.

    The writer runs in its own session, so its whole process group is killed; it is never left running.
    """
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def opacus_epsilon(phases: list[tuple[float, float, int]], delta: float, *,
                   accountant: type[IAccountant] = RDPAccountant) -> float:
    """Epsilon of ``(sigma, q, steps)`` phases by a plain Opacus accountant stepped one invocation at a time.

    The independent reference fedrec's accounting and calibration are checked against.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = accountant()
        for sigma, q, steps in phases:
            for _ in range(steps):
                acc.step(noise_multiplier=sigma, sample_rate=q)
        return float(acc.get_epsilon(delta=delta))


def chi_square(data: bytes) -> float:
    """Pearson's statistic of the byte histogram against uniform (255 degrees of freedom; ~255 for random bytes)."""
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())
