"""Secure aggregation end to end on Flower's Simulation Engine (real ServerApp, ClientApp, Ray workers).

Every reply a device sends is captured where the server receives it: with
secure aggregation on, nothing in them may reveal a user factor (not even a
scaled copy), a rating, an item id or which items a device touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fedrec.client.app import make_client_app, simulation_source
from fedrec.server.app import catalogue_for
from fedrec.server.loop import _train_round, run_server, wait_for_nodes
from fedrec.server.secagg import neighbours_for, secure_train_round, threshold_for
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedrec import wire
from fedrec.runconfig import RunConfig
from fedrec.secagg import quant_config_for
from fedrec.secagg.quantize import quantize
from fedrec.train.federated import ServerState

N_DEVICES, N_ITEMS, DIM = 24, 40, 16
SMALL = {"synthetic.n-users": N_DEVICES, "synthetic.n-items": N_ITEMS, "synthetic.mean-interactions": 12,
         "model.dim": DIM, "secagg.enabled": True, "secagg.neighbours": "all", "secagg.timeout": 120.0}
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False}}
REPLY_KEYS = {
    wire.MSG_SECAGG_SETUP: {"round_id", "node_id", "c_pk", "s_pk"},
    wire.MSG_SECAGG_SHARE: {"round_id", "node_id", "receivers", "ciphertexts"},
    wire.MSG_SECAGG_MASK: {"round_id", "node_id"},
    wire.MSG_SECAGG_UNMASK: {"round_id", "node_id", "survivors", "seed_shares", "dropped", "key_shares"},
}
CHI2_LIMIT = 450.0
"""Chi-square of byte counts over 256 bins (255 dof, mean 255, sd 22.6): uniform bytes exceed 450
with probability below 1e-12; a quantized vector that is not masked scores in the thousands."""


class WireGrid:
    """A Grid that keeps every (message sent, reply received) pair: what actually crossed the wire."""

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

    def of_type(self, kind: str) -> list[Message]:
        return [r for r in self.replies if r.metadata.message_type == kind]


def _simulate(main: Any, client: ClientApp) -> None:
    app = ServerApp()
    app.main()(main)
    run_simulation(server_app=app, client_app=client, num_supernodes=N_DEVICES, backend_config=BACKEND)


def chi_square(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def max_cosine(vector: np.ndarray, factor: np.ndarray) -> float:
    """Largest |cosine| between ``factor`` and any window of ``vector`` of its length."""
    window = np.lib.stride_tricks.sliding_window_view(vector.astype(np.float64), len(factor))
    norms = np.linalg.norm(window, axis=1) * np.linalg.norm(factor) + 1e-12
    return float((np.abs(window @ factor) / norms).max())


def float_views(masked: np.ndarray) -> list[np.ndarray]:
    """The ways a reader could take the masked ring vector as floats."""
    with np.errstate(invalid="ignore"):
        as_float = masked.view(np.float32).astype(np.float64)
    return [masked.astype(np.float64), masked.astype(np.float64) - 2.0**31,
            np.where(np.isfinite(as_float), as_float, 0.0)]


def test_neighbourhood_and_threshold_settings() -> None:
    spec = RunConfig.from_flat({"secagg.neighbours": "auto"}).secagg
    assert [neighbours_for(spec, n) for n in (2, 10, 50, 100, 943)] == ["all", "all", 13, 15, 20]
    fixed = RunConfig.from_flat({"secagg.neighbours": 7}).secagg
    assert [neighbours_for(fixed, n) for n in (5, 9, 10)] == ["all", 6, 7]
    assert neighbours_for(RunConfig.from_flat({"secagg.neighbours": "all"}).secagg, 943) == "all"
    assert threshold_for(RunConfig.from_flat({"secagg.threshold": 0.6}).secagg) == 0.6
    assert threshold_for(RunConfig.from_flat({"secagg.threshold": 5}).secagg) == 5


def test_leak_detectors_catch_a_leaking_vector() -> None:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(DIM)
    leaking = np.concatenate([rng.standard_normal(50), -0.37 * p, rng.standard_normal(50)])
    assert max_cosine(leaking, p) > 0.999
    quant = quant_config_for(n_items=N_ITEMS, dim=DIM, clip=1.0, bits=32, max_count=1, cohort=N_DEVICES)
    update = {"item_factors": np.zeros(N_ITEMS * DIM), "item_bias": np.zeros(N_ITEMS), "counts": np.zeros(N_ITEMS)}
    update["item_factors"][:DIM] = 0.05 * p
    update["counts"][0] = 1.0
    assert chi_square(quantize(update, quant, rng=rng).tobytes()) > 10 * CHI2_LIMIT


def test_secure_round_matches_plain_and_hides_everything(tmp_path: Path) -> None:
    """One round both ways from the same table; only the secure replies are checked for leaks."""
    cfg = RunConfig.from_flat(SMALL)
    box: dict[str, Any] = {}

    def probe(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type == wire.MSG_SECAGG_MASK and not reply.has_error():
            state = context.state.array_records[wire.STATE_LOCAL]
            (factor,) = [v.numpy() for k, v in state.items() if k.endswith(".factor")]
            rows = simulation_source(context, cfg).train()
            np.savez(tmp_path / f"{context.node_id}.npz", factor=factor, items=rows.items, ratings=rows.ratings)
        return reply

    def main(grid: Grid, context: Context) -> None:
        rec = box["grid"] = WireGrid(grid)
        nodes = wait_for_nodes(rec, N_DEVICES, timeout=60)
        state = ServerState.start(catalogue_for(cfg).n_items, cfg.model, cfg.fed, global_mean=3.0)
        box["secure"] = secure_train_round(rec, cfg, state, nodes, 1)
        box["plain"] = _train_round(rec, cfg, state, nodes, 1)
        stale = [m for m in rec.sent if m.metadata.message_type in (wire.MSG_SECAGG_SETUP, wire.MSG_SECAGG_MASK)]
        replays = [Message(m.content, dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type,
                           group_id="1") for m in (stale[0], stale[-1])]
        box["replayed"] = list(grid.send_and_receive(replays, timeout=60))
        box["nodes"] = nodes

    _simulate(main, make_client_app(mods=[probe]))
    rec, nodes = box["grid"], box["nodes"]
    secure, dropped, metrics = box["secure"]
    plain = box["plain"][0]
    assert secure.n_clients == plain.n_clients == N_DEVICES and dropped == []
    assert metrics == [{wire.MET_OK: 1.0}] * N_DEVICES

    # The secure sum is the plain sum of the clipped updates, within the quantization bound.
    quant = quant_config_for(n_items=N_ITEMS, dim=DIM, clip=1.0, bits=32, max_count=1, cohort=N_DEVICES)
    scale = {s.name: s.scale for s in quant.segments}
    updates = [{k: v.numpy().astype(np.float64) for k, v in r.content.array_records[wire.RECORD_UPDATE].items()}
               for r in rec.of_type(wire.MSG_TRAIN)]
    for name, got in (("item_factors", secure.item_factors), ("item_bias", secure.item_bias)):
        want = sum(np.clip(u[name], -1.0, 1.0) for u in updates)
        assert np.abs(got - want).max() <= N_DEVICES / scale[name]
        assert np.abs(got - getattr(plain, name)).max() <= N_DEVICES / scale[name] + 1e-4
    np.testing.assert_array_equal(secure.counts, plain.counts)

    # Messages of a finished round are refused.
    assert len(box["replayed"]) == 2 and all(r.has_error() for r in box["replayed"])
    assert all("refused" in r.error.reason for r in box["replayed"])

    _assert_replies_hide_the_devices(rec, nodes, tmp_path)


def _assert_replies_hide_the_devices(rec: WireGrid, nodes: list[int], logs: Path) -> None:
    masked_bytes = b""
    factors = [np.load(f)["factor"] for f in logs.glob("*.npz")]
    assert len(factors) == N_DEVICES and sum(np.linalg.norm(f) > 0 for f in factors) >= N_DEVICES - 2
    for stage, keys in REPLY_KEYS.items():
        replies = rec.of_type(stage)
        assert len(replies) == N_DEVICES
        for reply in replies:
            content = reply.content
            expected = {wire.RECORD_SECAGG} | ({wire.RECORD_SECAGG_ARRAYS, wire.RECORD_METRICS}
                                                if stage == wire.MSG_SECAGG_MASK else set())
            assert set(content.keys()) == expected
            config = dict(content.config_records[wire.RECORD_SECAGG])
            assert set(config) == keys
            for value in config.values():  # integers are round and node ids only: no item id list
                ints = value if isinstance(value, list) and value and isinstance(value[0], int) else []
                assert set(ints) <= set(nodes)
                assert not isinstance(value, float) and not (isinstance(value, list) and value
                                                             and isinstance(value[0], float))
            if stage == wire.MSG_SECAGG_MASK:
                assert dict(content.metric_records[wire.RECORD_METRICS]) == {wire.MET_OK: 1.0}
                masked_bytes += _assert_masked_hides(reply, logs)
    assert chi_square(masked_bytes) < CHI2_LIMIT


def _assert_masked_hides(reply: Message, logs: Path) -> bytes:
    (masked,) = [v.numpy() for v in reply.content.array_records[wire.RECORD_SECAGG_ARRAYS].values()]
    assert masked.dtype == np.uint32 and masked.shape == (N_ITEMS * (DIM + 2),)
    device = np.load(logs / f"{reply.metadata.src_node_id}.npz")
    p, items, ratings = device["factor"].astype(np.float64), device["items"], device["ratings"]
    assert len(items) > 0
    for view in float_views(masked):
        if np.linalg.norm(p) > 0:  # a user whose ratings all sit at the prior has nothing to hide here
            assert max_cosine(view, p) < 0.999, "a scaled copy of the user factor left the device"
        assert not np.isin(np.round(view, 6), ratings).any(), "a raw rating left the device"
    untouched = np.setdiff1d(np.arange(N_ITEMS), items)
    rows = np.concatenate([(untouched[:, None] * DIM + np.arange(DIM)).ravel(),
                           N_ITEMS * DIM + untouched, N_ITEMS * (DIM + 1) + untouched])
    assert np.count_nonzero(masked == 0) <= 1 and np.count_nonzero(np.diff(masked[np.sort(rows)]) == 0) <= 1
    assert chi_square(masked.tobytes()) < CHI2_LIMIT
    return masked.tobytes()


def test_dropouts_at_every_stage_and_an_aborted_round(tmp_path: Path) -> None:
    """Round 1: one device fails at each stage, the round completes; round 2: too many fail at the
    mask stage, the round aborts and the table stays as it was; round 3 runs normally."""
    cfg = RunConfig.from_flat({**SMALL, "model.dim": 4, "rounds": 3, "eval-every": 5})
    real = make_client_app()
    flaky = ClientApp()
    failing = {"1": {wire.MSG_SECAGG_SETUP: {0}, wire.MSG_SECAGG_SHARE: {1}, wire.MSG_SECAGG_MASK: {2},
                     wire.MSG_SECAGG_UNMASK: {3}},
               "2": {wire.MSG_SECAGG_MASK: set(range(14))}}

    def handler(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid in failing.get(msg.metadata.group_id, {}).get(msg.metadata.message_type, set()):
            raise RuntimeError("device went offline")
        return real(msg, context)

    for stage in (wire.MSG_SECAGG_SETUP, wire.MSG_SECAGG_SHARE, wire.MSG_SECAGG_MASK, wire.MSG_SECAGG_UNMASK):
        flaky.train(stage.split(".")[1])(handler)
    flaky.evaluate()(handler)
    box: dict[str, Any] = {}

    def main(grid: Grid, context: Context) -> None:
        box["grid"] = WireGrid(grid)
        box["history"] = run_server(box["grid"], cfg, catalogue_for(cfg)).history

    _simulate(main, flaky)
    history = box["history"]
    assert [r["survivors"] for r in history] == [N_DEVICES - 3, 0, N_DEVICES]
    assert [r["dropouts"] for r in history] == [3, N_DEVICES, 0]
    tables = [m.content.array_records[wire.RECORD_GLOBAL] for m in box["grid"].sent
              if m.metadata.message_type == wire.MSG_SECAGG_MASK]
    by_round = {m.metadata.group_id: m.content.array_records[wire.RECORD_GLOBAL] for m in box["grid"].sent
                if m.metadata.message_type == wire.MSG_SECAGG_MASK}
    assert len(tables) == 3 * N_DEVICES - 2
    for name in ("item_factors", "item_bias"):
        assert not np.array_equal(by_round["1"][name].numpy(), by_round["2"][name].numpy())
        np.testing.assert_array_equal(by_round["2"][name].numpy(), by_round["3"][name].numpy())
    assert "rmse" in history[-1]
