"""Cost of a round against the population and the catalogue, beside a bare Flower round measured in the same run.

For each cell (users x items x secure aggregation off/on) one process runs
fedrec on Flower's Simulation Engine with one virtual device per user: first a
few rounds at a cohort of 100, then a few at 1,000 (when the population allows).
Another process runs a *bare* Flower app on the same engine, the same
population, the same cohorts, the same downlink payload (fedrec's own record
builders) and a reply of the same arrays, with the same link-state index: only
the messaging. Reported per cell: start-up (process start to the end of round 1:
dataset store, Ray, node registration and the workers' first imports), median seconds per round at
each cohort (rounds after the first, training only: evaluation is excluded),
peak resident memory of the whole process tree (Ray workers included) and
array bytes per device per round, down and up::

    python -m simulations.bench_scale [--quick] [--json] [--users 10000,100000] [--items 1682,27000]
    python -m simulations.bench_scale --headline   # 1M users, cohort 1,000, 20 rounds, vs 10k users and bare Flower
    python -m simulations.bench_scale --startup    # start-up at 100k and 1M users, Flower's vs bulk registration

``--quick`` measures one small cell. The PNG (``--plot``, default
``bench_scale.png``) shows seconds per round against users and items, log-log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_STARTED = time.perf_counter()

from .bench_federated import time_command  # noqa: E402  (after the start clock)
from .flower_linkstate import BULK_REGISTRATION_ENV  # noqa: E402

log = logging.getLogger(__name__)

QUICK = {"users": [10_000], "items": [1682], "secagg": [False], "cohorts": [100], "rounds": 3}
FULL = {"users": [10_000, 100_000, 1_000_000], "items": [1682, 27_000, 100_000], "secagg": [False, True],
        "cohorts": [100, 1000], "rounds": 4}
FITS_BYTES = 6 * 2**30
"""A cell is skipped when one round's messages (cohort x payload, both ways) would exceed this."""


# -- one cell, in its own process --------------------------------------------------------------


def _config(users: int, items: int, secagg: bool, cohort: int, rounds: int) -> Any:
    from fedrec.runconfig import RunConfig

    return RunConfig.from_flat({"synthetic.n-users": users, "synthetic.n-items": items, "cohort": cohort,
                                "rounds": rounds, "eval-every": rounds + 1, "eval-cohort": 10,
                                "secagg.enabled": secagg, "min-clients": users})


class ByteGrid:
    """A Grid that adds up the array bytes each round sends and receives."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.down = 0
        self.up = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        self.down += sum(_array_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.up += sum(_array_bytes(r.content) for r in replies if not r.has_error())
        return replies


def _array_bytes(content: Any) -> int:
    return sum(len(a.data) for record in content.array_records.values() for a in record.values())


class BareClient:
    """Bare Flower device: replies with the arrays it received plus a counts vector (fedrec's reply shape)."""

    def __call__(self, msg: Any, context: Any) -> Any:
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        from fedrec import wire

        arrays = msg.content.array_records[wire.RECORD_GLOBAL]
        factors = arrays[wire.ARRAY_ITEM_FACTORS].numpy()
        reply = {wire.ARRAY_ITEM_FACTORS: Array(factors), wire.ARRAY_ITEM_BIAS: arrays[wire.ARRAY_ITEM_BIAS],
                 wire.ARRAY_COUNTS: Array(np.zeros(len(factors), factors.dtype))}
        return Message(RecordDict({wire.RECORD_UPDATE: ArrayRecord(reply), wire.RECORD_METRICS: MetricRecord({})}),
                       reply_to=msg)


def _bare_rounds(grid: Any, cfg: Any, cohort: int, rounds: int, rows: list[dict[str, Any]]) -> None:
    from fedrec.server.loop import wait_for_nodes
    from fedrec.server.records import downlink_record, global_record, train_content
    from flwr.app import Message

    from fedrec import wire
    from fedrec.federated.server_state import ServerState, sample_cohort

    nodes = wait_for_nodes(grid, cfg.min_clients, timeout=600)
    state = ServerState.start(cfg.data.synthetic.n_items, cfg.model, cfg.fed, global_mean=3.0)
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        content = train_content(global_record(state.glob), downlink_record(cfg, round_=rnd, global_mean=3.0))
        chosen = sample_cohort(nodes, cohort, state.rng)
        messages = [Message(content, dst_node_id=n, message_type=wire.MSG_TRAIN, group_id=str(rnd), ttl=600)
                    for n in chosen]
        replies = list(grid.send_and_receive(messages, timeout=600))
        ok = sum(not r.has_error() for r in replies)
        rows.append({"round": rnd, "train_seconds": time.perf_counter() - start, "survivors": ok,
                     "first_round_start": start})


def measure_cell(kind: str, users: int, items: int, secagg: bool, cohorts: list[int], rounds: int) -> dict[str, Any]:
    """Run one cell in this process and return its figures (start-up, s/round per cohort, bytes per device)."""
    from fedrec.server.app import catalogue_for
    from fedrec.server.loop import train_over_grid
    from fedrec.simulations.flower_linkstate import install
    from fedrec.simulations.runner import validate
    from flwr.app import Context
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    install()
    cohorts = [c for c in cohorts if c <= users]
    cfgs = {c: _config(users, items, secagg, c, rounds) for c in cohorts}
    n_devices = validate(cfgs[cohorts[0]])  # builds (or maps) the dataset store once, in the driver
    data_ready = time.perf_counter() - _STARTED
    out: dict[str, Any] = {"kind": kind, "users": users, "items": items, "secagg": secagg, "data_s": data_ready,
                           "round_s": {}, "first_round_s": {}, "down_kb": {}, "up_kb": {}}
    first_start: list[float] = []

    def _stamp(row: dict[str, Any]) -> None:
        row["first_round_start"] = time.perf_counter() - row["seconds"]

    def main(grid: Grid, context: Context) -> None:
        out["serverapp_s"] = time.perf_counter() - _STARTED
        metered = ByteGrid(grid)
        for cohort, cfg in cfgs.items():
            rows: list[dict[str, Any]] = []
            metered.down = metered.up = 0
            if kind == "bare":
                _bare_rounds(metered, cfg, cohort, rounds, rows)
            else:
                rows = train_over_grid(metered, cfg, catalogue_for(cfg), on_round=_stamp).history
            if not first_start:
                first_start.append(rows[0]["first_round_start"])
            later = [r["train_seconds"] for r in rows[1:]] or [rows[0]["train_seconds"]]
            out["round_s"][str(cohort)] = statistics.median(later)
            out["first_round_s"][str(cohort)] = rows[0]["train_seconds"]
            out["down_kb"][str(cohort)] = metered.down / 1024 / cohort / rounds
            out["up_kb"][str(cohort)] = metered.up / 1024 / cohort / rounds
            out.setdefault("survivors", {})[str(cohort)] = min(r["survivors"] for r in rows)
            out.setdefault("rounds", {})[str(cohort)] = [round(r["train_seconds"], 3) for r in rows]

    if kind == "bare":
        client = ClientApp()
        client.train()(BareClient())
    else:
        from fedrec.client.app import make_client_app

        client = make_client_app(run_config=list(cfgs.values()))
    app = ServerApp()
    app.main()(main)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    run_simulation(server_app=app, client_app=client, num_supernodes=n_devices,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
    # Start-up runs to the end of round 1: Flower starts its Ray workers (and they import fedrec) on the first
    # message, so round 1 is part of getting ready, not a steady-state round.
    first = next(iter(out["first_round_s"].values()), float("nan"))
    out["startup_s"] = first_start[0] + first - _STARTED if first_start else float("nan")
    out["nodes_ready_s"] = first_start[0] - _STARTED if first_start else float("nan")
    out["registration"] = "flower" if os.environ.get(BULK_REGISTRATION_ENV) == "0" else "bulk"
    return out


# -- the table ---------------------------------------------------------------------------------


def fits(users: int, items: int, cohort: int, dim: int = 32) -> bool:
    """Whether one round's messages at ``cohort`` fit the memory budget (and the population has the cohort)."""
    return cohort <= users and cohort * items * (dim + 2) * 4 * 2 <= FITS_BYTES


def measure(kind: str, users: int, items: int, secagg: bool, cohorts: list[int], rounds: int, *,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """One cell in a fresh process (with ``env`` added): its figures plus wall time and the tree's peak memory."""
    cmd = [sys.executable, "-m", "simulations.bench_scale", "--cell", kind, "--users", str(users), "--items",
           str(items), "--rounds", str(rounds), "--cohorts", ",".join(map(str, cohorts))]
    if secagg:
        cmd.append("--secagg")
    stdout, wall, peak = time_command(cmd, env)
    row: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    row.update({"wall_s": wall, "peak_mb": peak})
    return row


def table(rows: list[dict[str, Any]], cohorts: list[int]) -> str:
    """One line per cell and engine; ratios fedrec / bare at each cohort."""
    head = f"{'engine':<7}{'users':>9}{'items':>8}{'secagg':>7}{'start s':>9}"
    head += "".join(f"{'s/rnd@' + str(c):>11}{'x bare':>7}" for c in cohorts)
    head += f"{'peak MB':>9}{'kB down':>9}{'kB up':>8}"
    lines = [head]
    bare = {(r["users"], r["items"]): r for r in rows if r["kind"] == "bare"}
    for r in rows:
        secagg = "on" if r["secagg"] else "off"
        line = f"{r['kind']:<7}{r['users']:>9,}{r['items']:>8,}{secagg:>7}{r['startup_s']:>9.1f}"
        for c in cohorts:
            s = r["round_s"].get(str(c))
            base = bare.get((r["users"], r["items"]), {}).get("round_s", {}).get(str(c))
            ratio = f"{s / base:>7.2f}" if s and base and r["kind"] != "bare" else f"{'':>7}"
            line += (f"{s:>11.2f}" if s is not None else f"{'-':>11}") + ratio
        c0 = next(iter(r["down_kb"]), None)
        down, up = (r["down_kb"][c0], r["up_kb"][c0]) if c0 else (float("nan"), float("nan"))
        line += f"{r['peak_mb']:>9.0f}{down:>9.0f}{up:>8.0f}"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Log-log seconds per round against users and items, and start-up against users; fedrec solid, bare dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    starts: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("startup_s") is None:  # a row shown for its rounds only
            continue
        key = (r["kind"], r.get("registration", "bulk"), r["items"])
        starts.setdefault(key, []).append((r["users"], r["startup_s"]))
    for (kind, registration, items), points in sorted(starts.items(), key=str):
        points.sort()
        axes[2].plot(*zip(*points, strict=True), marker="o", linestyle="--" if kind == "bare" else "-",
                     label=f"{kind}, {registration} registration, items {items:,}")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("users")
    axes[2].set_ylabel("start-up s (process start to end of round 1)")
    axes[2].grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=6)
    for ax, along, other in ((axes[0], "users", "items"), (axes[1], "items", "users")):
        groups: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
        for r in rows:
            if r.get("registration", "bulk") != "bulk":
                continue
            for cohort, s in r["round_s"].items():
                key = (r["kind"], r["secagg"], r[other], cohort)
                groups.setdefault(key, []).append((r[along], s))
        for (kind, secagg, fixed, cohort), points in sorted(groups.items(), key=str):
            points.sort()
            label = f"{kind}{' secagg' if secagg else ''}, cohort {cohort}, {other} {fixed:,}"
            ax.plot(*zip(*points, strict=True), marker="o", linestyle="--" if kind == "bare" else "-", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(along)
        ax.set_ylabel("seconds per round")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("fedrec round cost against population and catalogue (Flower Simulation Engine, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_cells(spec: dict[str, Any]) -> list[tuple[str, int, int, bool, list[int]]]:
    """Cells to run: fedrec with secagg off/on and one bare baseline per (users, items)."""
    cells = []
    for users in spec["users"]:
        for items in spec["items"]:
            cohorts = [c for c in spec["cohorts"] if fits(users, items, c)]
            if not cohorts:
                continue
            cells.append(("bare", users, items, False, cohorts))
            cells.extend(("fedrec", users, items, secagg, cohorts) for secagg in spec["secagg"])
    return cells


def headline(rounds: int) -> dict[str, Any]:
    """1M users at a cohort of 1,000 for ``rounds`` rounds, beside 10k users and a bare Flower round at 1M."""
    out = {"fedrec_1m": measure("fedrec", 1_000_000, 1682, False, [1000], rounds),
           "bare_1m": measure("bare", 1_000_000, 1682, False, [1000], max(3, rounds // 4)),
           "fedrec_10k": measure("fedrec", 10_000, 1682, False, [1000], max(3, rounds // 4))}
    f1m, b1m, f10k = (out[k]["round_s"]["1000"] for k in ("fedrec_1m", "bare_1m", "fedrec_10k"))
    out["ratios"] = {"1m_over_10k": f1m / f10k, "fedrec_over_bare": f1m / b1m}
    return out


def startup(users: list[int], cohort: int, rounds: int) -> list[dict[str, Any]]:
    """Start-up with Flower's node registration and with the bulk one, bare Flower and fedrec, per population.

    Each cell runs in its own process, one after the other, in one run: the
    bare Flower app with Flower's registration is the baseline.
    """
    rows = []
    for n in users:
        for kind in ("bare", "fedrec"):
            for registration in ("flower", "bulk"):
                print(f"startup: {kind} {n:,} users, {registration} registration", file=sys.stderr, flush=True)
                env = {BULK_REGISTRATION_ENV: "0" if registration == "flower" else "1"}
                rows.append(measure(kind, n, 1682, False, [cohort], rounds, env=env))
    return rows


def startup_table(rows: list[dict[str, Any]]) -> str:
    """Where start-up goes: data store ready, ServerApp started, all nodes registered, end of round 1."""
    head = (f"{'engine':<7}{'users':>11}{'registration':>13}{'data s':>8}{'serverapp s':>12}{'nodes s':>9}"
            f"{'round 1 s':>10}{'start-up s':>11}{'s/round':>9}{'peak MB':>9}")
    lines = [head]
    for r in rows:
        s_round = next(iter(r["round_s"].values()), float("nan"))
        lines.append(f"{r['kind']:<7}{r['users']:>11,}{r['registration']:>13}{r['data_s']:>8.1f}"
                     f"{r.get('serverapp_s', float('nan')):>12.1f}{r['nodes_ready_s']:>9.1f}"
                     f"{next(iter(r['first_round_s'].values())):>10.1f}{r['startup_s']:>11.1f}{s_round:>9.2f}"
                     f"{r['peak_mb']:>9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small cell (10k users, 1,682 items, cohort 100)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--users", help="comma-separated populations")
    parser.add_argument("--items", help="comma-separated catalogue sizes")
    parser.add_argument("--cohorts", help="comma-separated cohort sizes")
    parser.add_argument("--rounds", type=int, help="rounds per cohort")
    parser.add_argument("--no-secagg", action="store_true", help="secure aggregation off only")
    parser.add_argument("--plot", default="bench_scale.png", help="PNG path ('' for none)")
    parser.add_argument("--headline", action="store_true", help="1M users, cohort 1,000, 20 rounds")
    parser.add_argument("--startup", action="store_true",
                        help="start-up with Flower's and the bulk node registration (default --users 100000,1000000,"
                             " --cohorts 1000, --rounds 2)")
    parser.add_argument("--cell", choices=("fedrec", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--secagg", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        row = measure_cell(args.cell, int(args.users), int(args.items), args.secagg,
                       [int(c) for c in args.cohorts.split(",")], args.rounds)
        print(json.dumps(row))
        return 0
    if args.startup:
        users = [int(v) for v in (args.users or "100000,1000000").split(",")]
        rows = startup(users, int((args.cohorts or "1000").split(",")[0]), args.rounds or 2)
        print(json.dumps({"startup": rows}) if args.json else startup_table(rows))
        return 0
    if args.headline:
        result = headline(args.rounds or 20)
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return 0
    spec = dict(QUICK if args.quick else FULL)
    for key in ("users", "items", "cohorts"):
        if getattr(args, key):
            spec[key] = [int(v) for v in getattr(args, key).split(",")]
    if args.rounds:
        spec["rounds"] = args.rounds
    if args.no_secagg:
        spec["secagg"] = [False]
    rows = []
    cells = grid_cells(spec)
    for i, (kind, users, items, secagg, cohorts) in enumerate(cells, 1):
        print(f"[{i}/{len(cells)}] {kind} {users:,} users x {items:,} items secagg={secagg} cohorts={cohorts}",
              file=sys.stderr, flush=True)
        rows.append(measure(kind, users, items, secagg, cohorts, spec["rounds"]))
    if args.plot:
        plot(rows, Path(args.plot))
    if args.json:
        print(json.dumps({"spec": spec, "rows": rows, "plot": args.plot or None}))
    else:
        print(table(rows, spec["cohorts"]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    raise SystemExit(main())
