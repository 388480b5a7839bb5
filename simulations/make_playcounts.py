"""Write a synthetic play-count log: tab-separated user, item, count; no timestamps.

The shape of a listening log as researchers bring it (last.fm-like): string ids,
a long-tailed item popularity, rows grouped by user in no particular order, a
count per (user, item) and no time column. Used to exercise ``fedrec
train-central``/``simulate`` on "your own data" and to measure the split
protocols on it (README, "Your own data")::

    python -m simulations.make_playcounts --out runs/plays.tsv
    fedrec train-central --dataset csv --data-dir runs/plays.tsv --protocol R1 \\
        --split random-one --set model.recency-boost=0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.store.atomic import atomic_write_text


def playcount_log(*, n_users: int, n_items: int, mean_interactions: float, seed: int, header: str | None) -> str:
    """The log's text: one ``user<TAB>item<TAB>count`` row per distinct (user, item)."""
    inter = generate(SyntheticConfig(n_users=n_users, n_items=n_items, mean_interactions=mean_interactions,
                                     implicit=True, seed=seed, zipf_exponent=1.1))
    rng = np.random.default_rng(seed + 1)
    order = np.lexsort((rng.random(len(inter)), inter.users))
    counts = rng.geometric(0.15, size=len(order))
    lines = [header] if header else []
    lines += [f"user{u}\tartist{i}\t{c}" for u, i, c in zip(inter.users[order], inter.items[order], counts,
                                                             strict=True)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.make_playcounts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="file to write (.tsv)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--mean-interactions", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--header", help="a header row to write first, e.g. 'userID\\titemID\\tweight'")
    args = parser.parse_args(argv)
    header = args.header.replace("\\t", "\t") if args.header else None
    text = playcount_log(n_users=args.users, n_items=args.items, mean_interactions=args.mean_interactions,
                         seed=args.seed, header=header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}: {text.count(chr(10)) - (1 if header else 0)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
