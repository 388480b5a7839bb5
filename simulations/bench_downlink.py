"""Bytes of one plain downlink, as Flower serializes it: the round's facts only, against the whole run configuration.

``python -m simulations.bench_downlink [--dataset D --items N --dim D --protocol P] [--json]``
builds a training and an evaluation downlink with the server's own record
builders (:func:`fedrec.server.records.downlink_record`) and, for comparison,
the configuration record of the earlier layout, which also carried every key
of the flat run configuration (``run.<key>``). Sizes are protobuf bytes
(``flwr.common.serde``), what a SuperLink stores and a SuperNode pulls.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def measure(dataset: str, items: int, dim: int, protocol: str) -> dict[str, Any]:
    from fedrec.server.records import downlink_record, global_record, train_content
    from flwr.app import ConfigRecord
    from flwr.common import serde

    from fedrec.federated.server_state import ServerState
    from fedrec.runconfig import RunConfig

    cfg = RunConfig.from_flat({"dataset": dataset, "protocol": protocol, "model.dim": dim})  # no data is loaded
    state = ServerState.start(items, cfg.model, cfg.fed, global_mean=3.0)
    table = global_record(state.glob, cfg.downlink)
    out: dict[str, Any] = {"dataset": dataset, "items": items, "dim": dim, "protocol": protocol}
    for kind, scale in (("train", None), ("evaluate", (1.0, 5.0) if cfg.model.kind == "explicit" else None)):
        facts = downlink_record(cfg, round_=7, global_mean=3.0, rating_scale=scale)
        earlier = {k: v for k, v in facts.items() if k != "run-digest"}
        earlier.update({f"run.{k}": v for k, v in cfg.flat.items()})
        whole = ConfigRecord(earlier)  # type: ignore[arg-type]  # flat values are Flower scalars
        after = serde.config_record_to_proto(facts).ByteSize()
        before = serde.config_record_to_proto(whole).ByteSize()
        message = serde.recorddict_to_proto(train_content(table, facts)).ByteSize()
        out[kind] = {"config_bytes_before": before, "config_bytes_after": after, "saved_bytes": before - after,
                     "keys_before": len(whole), "keys_after": len(facts), "message_bytes_after": message}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--protocol", default="E1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.dataset, args.items, args.dim, args.protocol)
    if args.json:
        print(json.dumps(result))
        return
    for kind in ("train", "evaluate"):
        r = result[kind]
        print(f"{kind}: configuration record {r['config_bytes_before']} B ({r['keys_before']} keys) -> "
              f"{r['config_bytes_after']} B ({r['keys_after']} keys), {r['saved_bytes']} B saved per message; "
              f"whole downlink now {r['message_bytes_after']} B")


if __name__ == "__main__":
    main()
