"""Seconds per round with and without secure aggregation on Flower, next to Flower's own SecAgg+.

For each item table (``n_items x 32``) and cohort size, one Flower simulation
(Ray workers, one virtual device per synthetic user) runs fedrec's round loop
functions directly: plain rounds (``_train_round``), pipelined secure rounds
(``SecureRounds`` with the next round's cohort, two trips a round) with the
SecAgg+ graph (``secagg.neighbours = auto``) and with the complete graph
(``all``), and four-trip secure rounds (``secagg.pipeline = false``) with the
SecAgg+ graph. Every measured pipelined round pre-starts the next one, as in a
run's steady state. The machine may be shared, so the plain rounds are
interleaved with the secure ones (a plain round with the same cohort right
before every secure round) and the plain row is the median of all of them:
a background load then weighs on both alike. A second simulation runs
Flower 1.42's legacy SecAgg+
(``SecAggPlusWorkflow`` in a ``DefaultWorkflow`` with ``LegacyContext`` and
``FedAvg``; ``secaggplus_mod`` on a ``NumPyClient``) with the same devices,
the same local training, the same vector length (``n_items * 34``, plus
Flower's weight), the threshold ``t`` of fedrec's ``auto`` mode and at most
its neighbourhood size ``k`` (Flower's ring needs an odd ``num_shares``, so
it gets ``k`` or ``k - 1`` neighbours; column ``k`` says which). Both
simulations use the link-state index of :mod:`simulations.flower_linkstate`
when it applies (Flower 1.42.x), so neither pays Flower's O(nodes x messages)
polling. The Flower app is built as a Flower app module would build it
(module-level ``client_fn``), fedrec's as ``client.app`` builds it.

Columns: ``trips`` message round trips (``send_and_receive`` calls) per
round; ``round_s`` median wall seconds per round after a warm-up round;
``server_s`` the part of it outside ``send_and_receive`` (sampling, routing,
unmasking, averaging); ``client_cpu_ms`` thread CPU inside the ClientApp per
cohort member and round (all stages, local training included: every device's
CPU in the round's window over the cohort size, so a pipelined round also
pays the next round's setup and share); ``up_kb`` / ``down_kb`` serialized
record bytes per cohort member and round (Flower's protobuf encoding),
counted the same way; ``x_plain`` round time over the plain row's. Flower's
simulation polls for messages every 0.1 s, so round times come in steps of
about 0.1 s.

Usage (from the project folder)::

    python -m simulations.bench_secagg                 # cohorts 10, 50, 100, 200; 1682 and 3706 items
    python -m simulations.bench_secagg --quick         # cohorts 10, 50; 1682 items; 1 measured round
    python -m simulations.bench_secagg --modes plain,auto,auto4 --cohorts 100 --items 1682
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedrec.federated.device import device_train
from fedrec.federated.server_state import ServerState, sample_cohort
from fedrec.model.params import GlobalParams
from fedrec.runconfig import RunConfig
from fedrec.secagg import resolve_threshold

DIM = 32
MEAN_INTERACTIONS = 100
MODES = ("plain", "auto", "auto4", "all", "flower")
MODE_NAMES = {"plain": "plain", "auto": "fedrec SecAgg+ pipelined (auto k)", "auto4": "fedrec SecAgg+ 4-trip (auto k)",
              "all": "fedrec complete graph (pipelined)", "flower": "Flower SecAgg+ (k' <= k)"}
NEIGHBOURS = {"plain": "auto", "auto": "auto", "auto4": "auto", "all": "all"}
PIPELINED = ("auto", "all")
BACKEND: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False}}

log = logging.getLogger(__name__)


# -- measurement ---------------------------------------------------------------


@dataclass
class Window:
    """One measured round: its wall time, time inside send_and_receive, and the messages that crossed."""

    label: tuple[str, int]
    start: float
    end: float = 0.0
    completed: bool = False
    waiting: float = 0.0
    trips: int = 0
    sent: list[Message] = field(default_factory=list)
    replies: list[Message] = field(default_factory=list)


class MeteredGrid:
    """A Grid that times rounds and keeps their messages for sizing once the round is over."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.windows: list[Window] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def open(self, label: tuple[str, int]) -> None:
        self.close(completed=False)
        self.windows.append(Window(label, time.time()))

    def close(self, *, completed: bool = True) -> None:
        if self.windows and not self.windows[-1].end:
            self.windows[-1].end = time.time()
            self.windows[-1].completed = completed

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        start = time.time()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if self.windows and not self.windows[-1].end:
            window = self.windows[-1]
            window.waiting += time.time() - start
            window.trips += 1
            window.sent.extend(messages)
            window.replies.extend(replies)
        return replies


def content_bytes(content: RecordDict, cache: dict[int, int]) -> int:
    """Serialized size of a message's records (shared contents are sized once)."""
    key = id(content)
    if key not in cache:
        cache[key] = recorddict_to_proto(content).ByteSize()
    return cache[key]


def traffic_kb(window: Window, n: int) -> tuple[float, float]:
    """kB up and down of one round per cohort member (all the round's messages over ``n``)."""
    cache: dict[int, int] = {}
    down = sum(content_bytes(msg.content, cache) for msg in window.sent)
    up = sum(content_bytes(msg.content, cache) for msg in window.replies if not msg.has_error())
    window.sent.clear()
    window.replies.clear()
    return up / 1024 / n, down / 1024 / n


class TimedClientApp(ClientApp):
    """A ClientApp that appends ``wall-time node thread-cpu-seconds`` per handled message to a per-process file.

    A module-level class rather than a client mod: the simulation pickles the
    ClientApp with every message, and a mod would add a closure to every
    handler, slowing every message down by more than what it measures.
    """

    log_dir: str

    @classmethod
    def wrap(cls, app: ClientApp, log_dir: str) -> TimedClientApp:
        timed = cls.__new__(cls)
        timed.__dict__.update(app.__dict__)
        timed.log_dir = log_dir
        return timed

    def __call__(self, message: Message, context: Context) -> Message:
        start = time.thread_time()
        try:
            return super().__call__(message, context)
        finally:
            line = f"{time.time():.6f}\t{context.node_id}\t{time.thread_time() - start:.6f}\n"
            with open(os.path.join(self.log_dir, f"cpu-{os.getpid()}.tsv"), "a") as out:
                out.write(line)


def client_cpu_ms(log_dir: str, window: Window, n: int) -> float:
    """ClientApp CPU milliseconds of every device during ``window``, per cohort member."""
    total, seen = 0.0, False
    for path in Path(log_dir).glob("cpu-*.tsv"):
        for line in path.read_text().splitlines():
            stamp, _, seconds = line.split("\t")
            if window.start <= float(stamp) <= window.end:
                total, seen = total + float(seconds), True
    return 1000 * total / n if seen else float("nan")


@dataclass
class Row:
    """One line of the table."""

    items: int
    n: int
    mode: str
    k: int
    t: int
    trips: float
    round_s: float
    server_s: float
    client_cpu_ms: float
    up_kb: float
    down_kb: float


def summarize(items: int, n: int, mode: str, k: int, t: int, windows: list[Window], log_dir: str) -> Row:
    """Median over the measured (non warm-up) rounds of ``mode`` in ``windows``; NaN when none completed."""
    measured = [w for w in windows if w.label[0] == mode and w.label[1] > 0 and w.completed]
    if not measured:
        nan = float("nan")
        return Row(items, n, mode, k, t, nan, nan, nan, nan, nan, nan)
    kb = [traffic_kb(w, n) for w in measured]
    return Row(items, n, mode, k, t, trips=statistics.median(w.trips for w in measured),
               round_s=statistics.median(w.end - w.start for w in measured),
               server_s=statistics.median(w.end - w.start - w.waiting for w in measured),
               client_cpu_ms=statistics.median(client_cpu_ms(log_dir, w, n) for w in measured),
               up_kb=statistics.median(u for u, _ in kb), down_kb=statistics.median(d for _, d in kb))


# -- settings shared by both simulations ---------------------------------------------------


def bench_config(items: int, users: int, neighbours: str = "auto", *, pipeline: bool = True) -> RunConfig:
    """Synthetic data with ``items`` items and one device per user; secure aggregation on or off per call."""
    return RunConfig.from_flat({"synthetic.n-users": users, "synthetic.n-items": items,
                                "synthetic.mean-interactions": MEAN_INTERACTIONS, "model.dim": DIM,
                                "secagg.enabled": True, "secagg.neighbours": neighbours,
                                "secagg.pipeline": pipeline})


def plain_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with secure aggregation off: the paired plain rounds' configuration."""
    return RunConfig.from_flat({**cfg.flat, "secagg.enabled": False})


def graph_of(cfg: RunConfig, n: int) -> tuple[int, int]:
    """``(k, t)`` fedrec uses for a cohort of ``n`` with ``cfg``'s neighbourhood setting."""
    from fedrec.server.secagg import neighbours_for, threshold_for

    neighbours = neighbours_for(cfg.secagg, n)
    k = n - 1 if neighbours == "all" else int(neighbours)
    return k, resolve_threshold(threshold_for(cfg.secagg), n_participants=n, neighbours=neighbours,
                                params=cfg.secagg.security)


def simulate(server_main: Callable[[Grid, Context], None], client: ClientApp, n_devices: int) -> None:
    """Run a ServerApp main on Flower's Simulation Engine (with the link-state index when it applies)."""
    from fedrec.simulations.flower_linkstate import install

    install()
    app = ServerApp()
    app.main()(server_main)
    run_simulation(server_app=app, client_app=client, num_supernodes=n_devices, backend_config=BACKEND)


# -- fedrec ------------------------------------------------------------------------------------


def bench_fedrec(items: int, cohorts: Sequence[int], modes: Sequence[str], rounds: int) -> list[Row]:
    """fedrec's plain and secure rounds at every cohort size, in one simulation."""
    from fedrec.client.app import make_client_app
    from fedrec.client.secagg import IdentityProvider
    from fedrec.server.loop import wait_for_nodes

    from fedrec.secagg.crypto.identity import SimulationAuthority

    authority = SimulationAuthority.generate()  # as the runner does: the server verifies advertisements too
    users = max(cohorts)
    configs = {mode: bench_config(items, users, NEIGHBOURS[mode], pipeline=mode in PIPELINED) for mode in modes}
    secure_modes = [m for m in modes if m != "plain"] or ["plain"]
    log_dir = tempfile.mkdtemp(prefix="bench-secagg-")
    rows: list[Row] = []

    def main(grid: Grid, context: Context) -> None:
        metered = MeteredGrid(grid)
        nodes = wait_for_nodes(grid, users, timeout=300)
        cfg0 = next(iter(configs.values()))
        state = ServerState.start(items, cfg0.model, cfg0.fed, global_mean=3.0)
        rnd, plain_windows = 0, []
        for n in cohorts:
            for mode in secure_modes:
                paired = "plain" in configs and mode != "plain"
                rnd = measure_rounds(metered, configs[mode], state, nodes, n, mode, rounds, rnd, paired=paired,
                                     authority_key=authority.public_key)
                plain_windows += [w for w in metered.windows if w.label[0] == "plain"]
                if mode != "plain":
                    k, t = graph_of(configs[mode], n)
                    rows.append(summarize(items, n, mode, k, t, metered.windows, log_dir))
                    print(format_row(rows[-1], None), flush=True)
                metered.windows.clear()
            if "plain" in configs:
                rows.append(summarize(items, n, "plain", 0, 0, plain_windows, log_dir))
                plain_windows.clear()
                print(format_row(rows[-1], None), flush=True)

    every = [c for cfg in configs.values() for c in (cfg, plain_config(cfg))]  # the devices hold each one
    simulate(main, TimedClientApp.wrap(make_client_app(run_config=every, identities=IdentityProvider(authority)),
                                       log_dir), users)
    return rows


def measure_rounds(metered: MeteredGrid, cfg: RunConfig, state: ServerState, nodes: list[int], n: int, mode: str,
                   rounds: int, rnd: int, *, paired: bool = False, authority_key: bytes | None = None) -> int:
    """A warm-up round and ``rounds`` measured ones of ``mode``; returns the last round number used.

    With ``paired`` a plain round (window label ``plain``) runs just before
    each of them, with the same cohort. Pipelined modes pre-start the round
    after every round, the measured ones included, so each measured round is
    a steady-state round (the last pre-started round is abandoned); a plain
    round in between does not touch the devices' secure-aggregation state.
    With ``authority_key`` the server verifies every advertisement, as a run does.
    """
    from fedrec.server.loop import _train_round
    from fedrec.server.secagg import SecureRounds

    plain_cfg = plain_config(cfg)
    secure = None if mode == "plain" else SecureRounds(metered, cfg, authority_key=authority_key)
    cohorts = [sample_cohort(nodes, n, state.rng) for _ in range(rounds + 2)]
    for r in range(rounds + 1):
        rnd += 1
        cohort, upcoming = cohorts[r], cohorts[r + 1] if mode in PIPELINED else None
        if paired or secure is None:
            timed_round(metered, ("plain", r), partial(_train_round, metered, plain_cfg, state, cohort, rnd), state)
        if secure is not None:
            timed_round(metered, (mode, r), partial(secure.train, state, cohort, rnd, next_cohort=upcoming), state)
    if secure is not None:
        secure.close()
    return rnd


def timed_round(metered: MeteredGrid, label: tuple[str, int], train: Callable[[], Any], state: ServerState) -> None:
    """One round in its own measurement window; the table moves by its sums."""
    metered.open(label)
    sums, dropped, _ = train()
    state.apply(sums)
    metered.close(completed=sums.n_clients > 0)
    if dropped:
        log.warning("%s round %d: %d dropouts", label[0], label[1], len(dropped))


# -- Flower's SecAgg+ -----------------------------------------------------------------------


class MFClient(NumPyClient):  # type: ignore[misc]
    """Flower's legacy client doing fedrec's local training: returns ``[dq, db, counts]`` (``n_items * 34`` floats)."""

    def __init__(self, context: Context, cfg: RunConfig) -> None:
        self.context, self.cfg = context, cfg

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        from fedrec.client.app import simulation_source

        cfg = self.cfg
        glob = GlobalParams.from_arrays({"item_factors": parameters[0], "item_bias": parameters[1]}, 3.0)
        out = device_train(simulation_source(self.context, cfg), {}, glob, model=cfg.model, local=cfg.fed.local,
                           seed=cfg.fed.seed, round_=int(config.get("round", 1)))
        seg = out.update.segments()
        return [seg["item_factors"], seg["item_bias"], seg["counts"]], 1, {}


@dataclass(frozen=True)
class ClientFn:
    """Flower's ``client_fn`` as a module-level callable (what a Flower app module defines)."""

    cfg: RunConfig

    def __call__(self, context: Context) -> Any:
        return MFClient(context, self.cfg).to_client()


def flower_client_app(cfg: RunConfig, log_dir: str) -> ClientApp:
    """Flower's legacy ClientApp: the NumPyClient under ``secaggplus_mod``."""
    return TimedClientApp.wrap(ClientApp(client_fn=ClientFn(cfg), mods=[secaggplus_mod]), log_dir)


def bench_flower(items: int, cohorts: Sequence[int], rounds: int) -> list[Row]:
    """Flower's legacy SecAgg+ at every cohort size, in one simulation."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    users = max(cohorts)
    cfg = bench_config(items, users)
    log_dir = tempfile.mkdtemp(prefix="bench-flower-")
    rows: list[Row] = []

    def main(grid: Grid, context: Context) -> None:
        glob = ServerState.start(items, cfg.model, cfg.fed, global_mean=3.0).glob
        initial = [glob.item_factors, glob.item_bias, np.zeros(items, np.float32)]
        for n in cohorts:
            k, t = graph_of(cfg, n)
            metered = FlowerRounds(grid)
            strategy = FedAvg(fraction_fit=n / users, min_fit_clients=n, min_available_clients=users,
                              fraction_evaluate=0.0, min_evaluate_clients=0,
                              initial_parameters=ndarrays_to_parameters(initial))
            strategy.aggregate_fit = metered.closing(strategy.aggregate_fit)  # type: ignore[method-assign]
            legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds + 1), strategy=strategy)
            workflow = SecAggPlusWorkflow(num_shares=flower_shares(n, k), reconstruction_threshold=t,
                                          clipping_range=1.0, timeout=600.0)
            DefaultWorkflow(fit_workflow=workflow)(metered, legacy)  # type: ignore[arg-type]
            metered.close(completed=False)
            rows.append(summarize(items, n, "flower", flower_shares(n, k) - 1, t, metered.windows, log_dir))
            print(format_row(rows[-1], None), flush=True)

    simulate(main, flower_client_app(cfg, log_dir), users)
    return rows


def flower_shares(n: int, k: int) -> int:
    """Flower's ``num_shares`` (neighbours plus the node itself) closest to fedrec's ``k`` from below.

    Flower 1.42 announces ``num_shares`` to the clients before making it odd for
    its ring graph, so an even value below ``n`` makes every client fail the
    share stage; an odd ``num_shares <= k + 1`` gives Flower at most ``k`` neighbours.
    """
    if k >= n - 1:
        return n
    return k + 1 if (k + 1) % 2 == 1 else k


class FlowerRounds(MeteredGrid):
    """Opens a new window whenever Flower's workflow sends the first message of a new round (``group_id``);
    :meth:`closing` wraps the strategy step that ends a round."""

    def closing(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            self.close()
            return out

        return wrapped

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if messages:
            label = ("flower", int(messages[0].metadata.group_id) - 1)
            if not self.windows or self.windows[-1].label != label:
                self.open(label)
        return super().send_and_receive(messages, timeout=timeout)


# -- table ---------------------------------------------------------------------------------------


COLUMNS = (("items", 6), ("n", 4), ("mode", 34), ("k", 4), ("t", 4), ("trips", 5), ("round_s", 8), ("x_plain", 8),
           ("server_s", 9), ("client_cpu_ms", 14), ("up_kb", 9), ("down_kb", 9))


def format_row(row: Row, plain: Row | None) -> str:
    """One fixed-width table line; ``x_plain`` needs the plain row of the same size."""
    values: dict[str, Any] = {**row.__dict__, "mode": MODE_NAMES[row.mode],
                              "x_plain": row.round_s / plain.round_s if plain else float("nan")}
    if row.mode == "plain":
        values["k"] = values["t"] = "-"
    cells = []
    for name, width in COLUMNS:
        value = values[name]
        text = f"{value:.0f}" if name == "trips" else f"{value:.2f}" if isinstance(value, float) else str(value)
        cells.append(text.rjust(width) if name != "mode" else text.ljust(width))
    return " ".join(cells)


def header() -> str:
    return " ".join(name.rjust(width) if name != "mode" else name.ljust(width) for name, width in COLUMNS)


def print_table(rows: list[Row]) -> None:
    """All rows, grouped by table size and cohort, with the overhead over plain."""
    print("\n" + header())
    plain = {(r.items, r.n): r for r in rows if r.mode == "plain"}
    for row in sorted(rows, key=lambda r: (r.items, r.n, MODES.index(r.mode))):
        print(format_row(row, plain.get((row.items, row.n))))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run both simulations per item table, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="cohorts 10, 50; 1682 items; 1 measured round")
    parser.add_argument("--cohorts", default=None, help="comma-separated cohort sizes (default 10,50,100,200)")
    parser.add_argument("--items", default=None, help="comma-separated item counts (default 1682,3706)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds per row after a warm-up")
    args = parser.parse_args(argv)
    cohorts = [int(c) for c in (args.cohorts or ("10,50" if args.quick else "10,50,100,200")).split(",")]
    items = [int(i) for i in (args.items or ("1682" if args.quick else "1682,3706")).split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    print(f"table n_items x {DIM}, synthetic users with ~{MEAN_INTERACTIONS} ratings, {rounds} measured round(s)"
          f" per row after one warm-up; 2 Ray workers; load average {load()}")
    print(header())
    rows: list[Row] = []
    for n_items in items:
        ours = [m for m in modes if m != "flower"]
        if ours:
            rows += bench_fedrec(n_items, cohorts, ours, rounds)
        if "flower" in modes:
            rows += bench_flower(n_items, cohorts, rounds)
    print_table(rows)
    print(f"load average at the end {load()}")
    return 0


def load() -> str:
    """The machine's 1, 5 and 15 minute load averages (the benchmark shares the machine)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    # Run under the package name, so Ray workers unpickle this module's classes by reference.
    from fedrec.simulations.bench_secagg import main as package_main

    sys.exit(package_main())
