"""Time the secure-aggregation core alone, next to a plain float32 sum.

Runs whole in-process rounds (no transport, no Flower) and prints one row per
(cohort size, graph, vector size, dropout rate) with the mean per-client CPU
milliseconds of each stage, the server's unmask milliseconds (reconstruction
plus mask removal) and its other stages, the mean payload bytes a client
sends and receives, and the time a plain server takes to sum the same number
of float32 vectors.

Usage::

    python simulations/bench_secagg_core.py            # n = 10, 50, 100, 200
    python simulations/bench_secagg_core.py --quick    # n = 10, 50; small vector
    python simulations/bench_secagg_core.py --dropouts 0,0.1 --sizes 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrec.secagg import (  # noqa: E402
    DeviceTrust,  # noqa: E402
    QuantConfig,
    SecAggClient,
    SecAggServer,
    SegmentSpec,
)
from fedrec.secagg.crypto.identity import SimulationAuthority  # noqa: E402
from fedrec.secagg.graph import min_threshold, secure_degree  # noqa: E402

AUTHORITY = SimulationAuthority(b"fedrec benchmark enrolment authority")
from fedrec.secagg.inprocess import STAGES, RoundTrace, Stage, aggregate_in_process  # noqa: E402

EMBED_DIM = 32
ITEM_COUNTS = {"ml-100k": 1682, "ml-1m": 3706}


@dataclass(frozen=True)
class Case:
    """One benchmark row's settings."""

    n: int
    graph: str
    k: int
    items: int
    dropout: float

    @property
    def threshold(self) -> int:
        """The smallest threshold devices accept for this neighbourhood (a majority at least)."""
        return max(self.k // 2 + 1, min_threshold(self.n, self.k))


def regular_degree(n: int) -> int:
    """The sparse degree devices accept: the security bound (:func:`fedrec.secagg.graph.secure_degree`)."""
    return secure_degree(n)


def layout(items: int) -> QuantConfig:
    """fedrec's masked vector: item-embedding deltas, item-bias deltas, item counts."""
    return QuantConfig(
        segments=(
            SegmentSpec.symmetric("item_emb", items * EMBED_DIM, clip=1.0),
            SegmentSpec.symmetric("item_bias", items, clip=1.0),
            SegmentSpec("item_count", items, lo=0.0, hi=16.0),
        ),
        bits=32,
    )


def make_inputs(
    quant: QuantConfig, ids: Sequence[int], rng: np.random.Generator
) -> dict[int, dict[str, np.ndarray]]:
    """Random float32 segments per client (normal deltas, small integer counts)."""
    out = {}
    for node in ids:
        segs = {}
        for spec in quant.segments:
            if spec.name == "item_count":
                segs[spec.name] = rng.integers(0, 3, spec.length).astype(np.float32)
            else:
                segs[spec.name] = (0.05 * rng.standard_normal(spec.length)).astype(np.float32)
        out[node] = segs
    return out


def plain_sum_ms(inputs: dict[int, dict[str, np.ndarray]], survivors: Sequence[int]) -> float:
    """Milliseconds for a plain server to sum the survivors' float32 vectors."""
    start = time.process_time()
    for name in next(iter(inputs.values())):
        acc = np.zeros_like(inputs[survivors[0]][name])
        for node in survivors:
            np.add(acc, inputs[node][name], out=acc)
    return 1000 * (time.process_time() - start)


def measure_case(case: Case, seed: int) -> dict[str, float]:
    """One round; returns the row's measurements."""
    rng = np.random.default_rng(seed)
    ids = sorted({int(x) for x in rng.integers(1, 2**63, size=case.n)})
    quant = layout(case.items)
    server = SecAggServer(
        round_id=seed,
        participants=ids,
        threshold=case.threshold,
        neighbours="all" if case.graph == "complete" else case.k,
        quant=quant,
        authority_key=AUTHORITY.public_key,
    )
    clients = {node: SecAggClient(node_id=node, trust=DeviceTrust(AUTHORITY.identity(node), AUTHORITY.public_key),
                                  rng=np.random.default_rng(node)) for node in ids}
    inputs = make_inputs(server.setup.quant, ids, rng)
    n_drop = int(round(case.dropout * case.n))
    drops: dict[int, Stage] = {int(node): "mask" for node in rng.choice(ids, n_drop, replace=False)}
    trace = RoundTrace()
    result = aggregate_in_process(server, clients, inputs, dropouts=drops, trace=trace)
    row = {
        f"c_{stage}": 1000 * statistics.fmean(trace.client_seconds[stage].values())
        for stage in STAGES
    }
    row["c_total"] = sum(row[f"c_{stage}"] for stage in STAGES)
    row["s_unmask"] = 1000 * trace.server_seconds["unmask"]
    row["s_other"] = 1000 * sum(v for k, v in trace.server_seconds.items() if k != "unmask")
    row["up_kb"] = statistics.fmean(trace.up_bytes.values()) / 1024
    row["down_kb"] = statistics.fmean(trace.down_bytes.values()) / 1024
    row["plain_ms"] = plain_sum_ms(inputs, result.survivors)
    row["plain_up_kb"] = quant.total_length * 4 / 1024
    row["contributors"] = result.n_contributors
    return row


COLUMNS = (
    ("n", 4),
    ("graph", 9),
    ("k", 4),
    ("t", 4),
    ("items", 6),
    ("drop", 5),
    ("contrib", 7),
    ("c_advertise", 8),
    ("c_share", 8),
    ("c_mask", 8),
    ("c_unmask", 8),
    ("c_total", 8),
    ("s_unmask", 9),
    ("s_other", 8),
    ("up_kb", 8),
    ("down_kb", 8),
    ("plain_ms", 8),
    ("plain_up_kb", 11),
)


def format_row(case: Case, row: dict[str, float]) -> str:
    """One fixed-width table line."""
    values = {
        "n": case.n,
        "graph": case.graph,
        "k": case.k,
        "t": case.threshold,
        "items": case.items,
        "drop": f"{case.dropout:.2f}",
        "contrib": int(row["contributors"]),
    }
    cells = []
    for name, width in COLUMNS:
        value = values.get(name, row.get(name))
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        cells.append(text.rjust(max(width, len(name))))
    return " ".join(cells)


def cases(sizes: Sequence[int], items: Sequence[int], dropouts: Sequence[float]) -> list[Case]:
    """Every combination, k-regular before complete."""
    out = []
    for n in sizes:
        for n_items in items:
            for dropout in dropouts:
                out.append(Case(n, "k-regular", regular_degree(n), n_items, dropout))
                out.append(Case(n, "complete", n - 1, n_items, dropout))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the cases, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 10, 50 and the ml-100k vector")
    parser.add_argument("--sizes", default=None, help="comma-separated cohort sizes")
    parser.add_argument("--items", default=None, help="comma-separated item counts")
    parser.add_argument("--dropouts", default="0", help="comma-separated dropout fractions")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    default_sizes, default_items = (
        ([10, 50], [1682]) if args.quick else ([10, 50, 100, 200], [1682, 3706])
    )
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else default_sizes
    items = [int(s) for s in args.items.split(",")] if args.items else default_items
    dropouts = [float(s) for s in args.dropouts.split(",")]
    print("fedrec secagg core benchmark: one in-process round per row; client columns are mean")
    print("CPU ms per client per stage (c_*), server ms (s_unmask = reconstruct + unmask,")
    print("s_other = keys/shares/masked stages), mean payload KiB per client (up/down), and a")
    print("plain float32 sum of the same survivors (plain_ms, plain_up_kb per client).")
    print("vector = items*32 + 2*items elements, uint32 ring; dropouts leave after sharing.")
    print(" ".join(name.rjust(max(width, len(name))) for name, width in COLUMNS))
    for i, case in enumerate(cases(sizes, items, dropouts)):
        print(format_row(case, measure_case(case, args.seed + i)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
