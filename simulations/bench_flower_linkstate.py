"""Seconds per round of a federated simulation with Flower's own link state and with fedrec's index.

Each variant runs in its own process (the index is a process-wide patch), on the
same configuration, and the script prints both side by side::

    python -m simulations.bench_flower_linkstate [--users 943] [--items 1682] [--rounds 3]

The first round also pays Ray's start-up and the workers' imports, so the
per-round figure is the median of the later rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def measure_variant(index: bool, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fedrec.cli", "simulate", "--json", "--run-dir", tmp,
               "--rounds", str(args.rounds), "--set", f"synthetic.n-users={args.users}",
               "--set", f"synthetic.n-items={args.items}", "--set", f"eval-every={args.rounds}",
               "--set", f"cohort={args.cohort}"]
        env = {**os.environ, "FEDREC_LINKSTATE_INDEX": "1" if index else "0"}
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        final = json.loads(out.strip().splitlines()[-1])
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    later = [r["train_seconds"] for r in rows[1:]] or [rows[0]["train_seconds"]]
    return {"round_s": statistics.median(later), "first_round_s": rows[0]["train_seconds"],
            "total_s": final["seconds"], "rmse": final.get("rmse", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cohort", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{args.users} devices, {args.items} items, cohort {args.cohort}, {args.rounds} rounds")
    print(f"{'link state':<22}{'s/round':>10}{'first round s':>15}{'total s':>10}{'rmse':>8}")
    for name, index in (("Flower 1.42 (scan)", False), ("fedrec index", True)):
        r = measure_variant(index, args)
        print(f"{name:<22}{r['round_s']:>10.2f}{r['first_round_s']:>15.2f}{r['total_s']:>10.1f}{r['rmse']:>8.4f}")


if __name__ == "__main__":
    main()
