"""Per-round cost of local training on one device: non-DP vs Opacus DP-SGD.

Three ways to run one local round for a user with ``--ratings`` ratings:

* ``plain``    : non-private mini-batch SGD on the gathered rows (numpy);
* ``dp-gather``: :func:`fedrec.privacy.local_dp.dp_local_train` — Opacus over
  the rated rows only, untouched rows noised analytically;
* ``dp-full``  : the same DP-SGD with the whole item table in the Opacus model,
  whose embedding hooks build ``batch x n_items x d`` per-sample gradients.

Each configuration runs in a fresh subprocess so its peak resident memory can
be read from ``getrusage``. A round on a tiny catalogue first pays the
one-off costs (imports, torch and Opacus initialisation), then the reported
memory is the growth of the peak resident set over that state across all
rounds of the real configuration. Wall time is the median of ``--repeats``
rounds after one warm-up round of the real configuration.

Run::

    python -m simulations.bench_dp_local            # from the repository root
    python simulations/bench_dp_local.py --threads 4
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("plain", "dp-gather", "dp-full")


def _make_device(n_items: int, dim: int, n_ratings: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "item_factors": (0.1 * rng.standard_normal((n_items, dim))).astype(np.float32),
        "item_bias": (0.1 * rng.standard_normal(n_items)).astype(np.float32),
        "global_mean": 3.5,
        "user_factor": (0.1 * rng.standard_normal(dim)).astype(np.float32),
        "user_bias": 0.0,
        "items": rng.choice(n_items, size=n_ratings, replace=False).astype(np.int64),
        "ratings": rng.integers(1, 6, size=n_ratings).astype(np.float32),
    }


def _round_fn(mode: str, device: dict[str, Any], args: argparse.Namespace) -> Callable[[], Any]:
    from fedrec.privacy.local_dp import dp_local_train, local_train

    common = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch, "reg": args.reg}
    dp = {"noise_multiplier": args.sigma, "max_grad_norm": args.clip, "delta": 1e-5}
    if mode == "plain":
        return lambda: local_train(**device, **common, seed=0)
    if mode == "dp-gather":
        return lambda: dp_local_train(**device, **common, **dp, accountant_state=None, seed=0)
    return lambda: _dp_full_table_round(device, common, dp)


def _dp_full_table_round(
    device: dict[str, Any], common: dict[str, Any], dp: dict[str, Any]
) -> Any:
    """``dp_local_train`` with the whole table inside the Opacus model."""
    import torch

    from fedrec.privacy.accounting import PrivacyAccountant
    from fedrec.privacy.calibration import local_schedule
    from fedrec.privacy.local_dp import _dense_deltas, _gather, _run_dp_sgd

    problem = _gather(**device, full_table=True)
    schedule = local_schedule(
        n_ratings=len(problem.ratings), batch_size=common["batch_size"], epochs=common["epochs"]
    )
    ledger = PrivacyAccountant("rdp", delta=dp["delta"])
    ledger.would_exceed(epsilon_budget=math.inf, noise_multiplier=dp["noise_multiplier"],
                        sample_rate=schedule.sample_rate, steps=schedule.steps)
    generator = torch.Generator().manual_seed(0)
    trained = _run_dp_sgd(
        problem, schedule=schedule, lr=common["lr"], reg=common["reg"],
        noise_multiplier=dp["noise_multiplier"], max_grad_norm=dp["max_grad_norm"],
        generator=generator, secure_mode=False,
        on_step=lambda opt: ledger.step(noise_multiplier=opt.noise_multiplier,
                                        sample_rate=schedule.sample_rate),
    )
    deltas = _dense_deltas(problem, trained, untouched_std=0.0, generator=generator,
                           secure_mode=False)
    return deltas, ledger.epsilon()


def _worker(mode: str, n_items: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    _round_fn(mode, _make_device(64, args.dim, min(args.ratings, 32), seed=2), args)()
    device = _make_device(n_items, args.dim, args.ratings, seed=1)
    run = _round_fn(mode, device, args)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = n_items if mode == "dp-full" else len(np.unique(device["items"]))
    per_sample_mb = args.batch * rows * (args.dim + 1) * 8 / 2**20 if mode != "plain" else 0.0
    return {
        "mode": mode,
        "n_items": n_items,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "peak_rss_growth_mb": (peak_kb - base_kb) / 1024,
        "per_sample_grad_mb": per_sample_mb,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalogues", type=int, nargs="+", default=[1682, 3706])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--ratings", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--reg", type=float, default=0.01)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "N_ITEMS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _forward_args(args: argparse.Namespace) -> list[str]:
    out = []
    for name in ("dim", "ratings", "epochs", "batch", "lr", "reg", "sigma", "clip",
                 "repeats", "threads"):
        out += [f"--{name}", str(getattr(args, name))]
    return out


def _spawn(mode: str, n_items: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "simulations.bench_dp_local", "--worker", mode, str(n_items),
           *_forward_args(args)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"local round: {args.ratings} ratings, d={args.dim}, {args.epochs} epochs, "
        f"expected batch {args.batch}, sigma={args.sigma}, C={args.clip}, "
        f"{args.threads} torch thread(s), median of {args.repeats}"
    )
    header = (f"{'n_items':>8} {'mode':>10} {'ms/round':>10} {'min ms':>8} "
              f"{'x plain':>8} {'peak RSS +MB':>13} {'per-sample grad MB':>19}")
    print(header)
    print("-" * len(header))
    plain = {r["n_items"]: r["ms_median"] for r in results if r["mode"] == "plain"}
    for r in results:
        ratio = r["ms_median"] / plain[r["n_items"]] if r["n_items"] in plain else math.nan
        print(f"{r['n_items']:>8} {r['mode']:>10} {r['ms_median']:>10.1f} {r['ms_min']:>8.1f} "
              f"{ratio:>8.1f} {r['peak_rss_growth_mb']:>13.1f} {r['per_sample_grad_mb']:>19.2f}")


def main(argv: list[str] | None = None) -> None:
    """Run every (catalogue, mode) in its own process and print the table."""
    args = _parse(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker[0], int(args.worker[1]), args)))
        return
    results = [_spawn(mode, n, args) for n in args.catalogues for mode in args.modes]
    _print_table(results, args)


if __name__ == "__main__":
    main()
