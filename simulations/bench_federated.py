"""Federated vs centralized on ML-100K E1 (fold 1), and where a round's time goes.

Part 1, side by side in one run: wall time and peak memory (resident set of the
whole process tree, Ray workers included) to reach the E1 target RMSE, for
the centralized trainer and for a Flower simulation with one device per user.

Part 2: seconds per round at several cohort sizes, split into client compute
(the device step timed in-process on the same devices, divided by the number of
parallel workers), server aggregation (noise, averaging, optimizer) and the
rest: Flower messaging and scheduling::

    python -m simulations.bench_federated --data-dir ../shared/data [--cohorts 10,100,943] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedrec.data.partition import partitions
from fedrec.data.spec import load_run_dataset
from fedrec.federated.device import device_train
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig

WORKERS = 2  # client_resources.num_cpus = 1 on 2 cores


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, from /proc (MB)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def time_command(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run ``cmd``; return stdout, wall seconds and peak tree RSS (sampled every 0.2 s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_mb(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return out, time.perf_counter() - start, peak


def central_to_target(data_dir: str, target: float, epoch_grid: list[int]) -> dict[str, Any]:
    for epochs in epoch_grid:
        out, wall, peak = time_command([sys.executable, "-m", "fedrec.cli", "train-central", "--dataset", "ml-100k",
                                        "--data-dir", data_dir, "--protocol", "E1", "--fold", "1",
                                        "--epochs", str(epochs), "--json"])
        res = json.loads(out)
        if res["rmse"] <= target:
            return {"engine": "centralized", "reached": True, "epochs/rounds": epochs, "rmse": res["rmse"],
                    "fit_s": res["fit_seconds"], "wall_s": wall, "peak_mb": peak}
    return {"engine": "centralized", "reached": False, "epochs/rounds": epoch_grid[-1], "rmse": res["rmse"],
            "fit_s": res["fit_seconds"], "wall_s": wall, "peak_mb": peak}


def federated_to_target(data_dir: str, target: float, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out, wall, peak = time_command([sys.executable, "-m", "fedrec.cli", "simulate", "--dataset", "ml-100k",
                                        "--data-dir", data_dir, "--protocol", "E1", "--fold", "1", "--json",
                                        "--rounds", str(rounds), "--set", "eval-every=1", "--run-dir", tmp])
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    json.loads(out)
    train_s, reached = 0.0, None
    for row in rows:
        train_s += row["train_seconds"] + row.get("checkpoint_seconds", 0.0)
        if row.get("rmse", 9.9) <= target:
            reached = row
            break
    last = reached or rows[-1]
    return {"engine": "federated (Flower)", "reached": reached is not None, "epochs/rounds": last["round"],
            "rmse": last["rmse"], "fit_s": train_s, "wall_s": wall, "peak_mb": peak}


def round_split(cohort: int, rounds: int, dataset_flags: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "fedrec.cli", "simulate", "--json", "--run-dir", tmp,
                        "--rounds", str(rounds), "--set", f"cohort={cohort}", "--set", f"eval-every={rounds}",
                        *dataset_flags], check=True, capture_output=True, text=True)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return {"round_s": statistics.median(r["train_seconds"] for r in later),
            "checkpoint_s": statistics.median(r["checkpoint_seconds"] for r in later)}


def client_compute_s(cfg: RunConfig, cohort: int) -> float:
    """Seconds of device computation for ``cohort`` devices (timed in this process)."""
    data = load_run_dataset(cfg.data)
    sources = partitions(data)[:cohort]
    glob = ServerState.start(data.n_items, cfg.model, cfg.fed, global_mean=3.0).glob
    start = time.perf_counter()
    for i, source in enumerate(sources):
        device_train(source, {}, glob, model=cfg.model, local=cfg.fed.local, seed=0, round_=i)
    return time.perf_counter() - start


def server_aggregation_s(cfg: RunConfig, cohort: int) -> float:
    """Seconds the server spends adding ``cohort`` dense replies and applying them (its own functions)."""
    import numpy as np

    from fedrec.train.aggregate import RoundSums

    data = load_run_dataset(cfg.data)
    state = ServerState.start(data.n_items, cfg.model, cfg.fed, global_mean=3.0)
    rng = np.random.default_rng(0)
    replies = [rng.normal(0, 1e-3, (data.n_items, cfg.model.dim + 2)).astype(np.float32) for _ in range(cohort)]
    start = time.perf_counter()
    sums = np.zeros((data.n_items, cfg.model.dim + 2))
    for reply in replies:
        sums += reply
    state.apply(RoundSums(sums[:, :-2], sums[:, -2], np.abs(sums[:, -1]), cohort))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("FEDREC_DATA_DIR"), required=not os.environ.get(
        "FEDREC_DATA_DIR"))
    parser.add_argument("--target", type=float, default=0.925)
    parser.add_argument("--cohorts", default="10,100,943")
    parser.add_argument("--rounds", type=int, default=30, help="federated rounds allowed to reach the target")
    parser.add_argument("--quick", action="store_true", help="skip part 1; 2 rounds per cohort")
    args = parser.parse_args()
    flags = ["--dataset", "ml-100k", "--data-dir", args.data_dir, "--protocol", "E1", "--fold", "1"]
    if not args.quick:
        print(f"Part 1: time and peak memory to reach E1 RMSE <= {args.target} on ML-100K u1 (dim 32)")
        print(f"{'engine':<22}{'reached':>8}{'ep/rnd':>8}{'rmse':>8}{'train s':>9}{'wall s':>8}{'peak MB':>9}")
        for res in (central_to_target(args.data_dir, args.target, [10, 20, 30, 40, 60]),
                    federated_to_target(args.data_dir, args.target, args.rounds)):
            print(f"{res['engine']:<22}{res['reached']!s:>8}{res['epochs/rounds']:>8}{res['rmse']:>8.4f}"
                  f"{res['fit_s']:>9.1f}{res['wall_s']:>8.1f}{res['peak_mb']:>9.0f}")
    cfg = RunConfig.from_flat({"dataset": "ml-100k", "data-dir": args.data_dir, "protocol": "E1", "fold": 1})
    print("\nPart 2: seconds per round (median of rounds after the first), ML-100K, 1682 x 32 table")
    print(f"{'cohort':>7}{'round s':>9}{'client compute s':>18}{'server agg s':>14}{'checkpoint s':>14}"
          f"{'messaging+sched s':>19}")
    for cohort in (int(c) for c in args.cohorts.split(",")):
        split = round_split(cohort, 2 if args.quick else 3, flags)
        compute = client_compute_s(cfg, cohort) / WORKERS
        aggregate = server_aggregation_s(cfg, cohort)
        rest = split["round_s"] - compute - aggregate
        print(f"{cohort:>7}{split['round_s']:>9.2f}{compute:>18.3f}{aggregate:>14.3f}"
              f"{split['checkpoint_s']:>14.3f}{rest:>19.2f}")
    print(f"\nclient compute: in-process time of the device step divided by {WORKERS} workers; server agg: "
          "in-process time of summing the cohort's dense replies and applying them")


if __name__ == "__main__":
    main()
