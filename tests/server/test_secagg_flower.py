"""Secure aggregation end to end on Flower's Simulation Engine (real ServerApp, ClientApp, Ray workers).

Every reply a device sends is captured where the server receives it: with
secure aggregation on, nothing in them may reveal a user factor (not even a
scaled copy), a rating, an item id or which items a device touched. Rounds run
stand-alone (four trips) and pipelined (the next round's setup and share in the
current round's mask and unmask trips: two trips a round).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedrec.client.app import RunConfigMod, make_client_app
from fedrec.client.device import simulation_source, train_device
from fedrec.client.records import load_state
from fedrec.server.app import catalogue_for
from fedrec.server.loop import _train_round, train_over_grid, wait_for_nodes
from fedrec.server.secagg import SecureRounds, neighbours_for, secure_train_round, threshold_for
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.supercore.task_identity import TaskIdentity
from testkit import chi_square, train_on_simulation_engine

from fedrec import wire
from fedrec.data.spec import load_run_dataset
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig
from fedrec.secagg import flatten_update, protocol_round_id, quant_config_for
from fedrec.secagg.quantize import quantize
from fedrec.train.aggregate import RoundSums

N_DEVICES, N_ITEMS, DIM = 24, 40, 16
SMALL = {"synthetic.n-users": N_DEVICES, "synthetic.n-items": N_ITEMS, "synthetic.mean-interactions": 12,
         "model.dim": DIM, "secagg.enabled": True, "secagg.neighbours": "all", "secagg.timeout": 120.0}
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False}}
REPLY_KEYS = {
    wire.SECAGG_SETUP: {"round_id", "node_id", "c_pk", "s_pk", "certificate", "signature"},
    wire.SECAGG_SHARE: {"round_id", "node_id", "receivers", "ciphertexts"},
    wire.SECAGG_MASK: {"round_id", "node_id"},
    wire.SECAGG_UNMASK: {"round_id", "node_id", "survivors", "seed_shares", "dropped", "key_shares"},
}
CHI2_LIMIT = 450.0
"""Chi-square of byte counts over 256 bins (255 dof, mean 255, sd 22.6): uniform bytes exceed 450
with probability below 1e-12; a quantized vector that is not masked scores in the thousands."""


def parts_of(msg: Message) -> set[str]:
    """The secure-aggregation parts a message (or reply) holds."""
    return {s for s in wire.SECAGG_STAGES if wire.secagg_record(s) in msg.content.config_records}


def errors_of(msg: Message) -> dict[str, str]:
    """``{stage: reason}`` of the parts a reply refused."""
    records = msg.content.config_records
    return {s: str(records[wire.secagg_error_record(s)][wire.SECAGG_REASON]) for s in wire.SECAGG_STAGES
            if wire.secagg_error_record(s) in records}


def round_of(msg: Message, stage: str) -> int:
    """The protocol round id of one part of a message."""
    return int(msg.content.config_records[wire.secagg_record(stage)]["round_id"])  # type: ignore[arg-type]


class WireGrid:
    """A Grid that keeps every (message sent, reply received) pair: what actually crossed the wire.

    ``calls`` holds the messages of each ``send_and_receive`` call, i.e. of each trip.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.calls: list[list[Message]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.sent.extend(messages)
        self.calls.append(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies

    def of_type(self, kind: str) -> list[Message]:
        return [r for r in self.replies if r.metadata.message_type == kind]

    def answered(self) -> list[Message]:
        """Secure-aggregation replies that are not whole-message errors."""
        return [r for r in self.of_type(wire.MSG_SECAGG) if not r.has_error()]

    def trips_per_group(self) -> dict[str, int]:
        """Secure-aggregation trips per round (``group_id``)."""
        return dict(Counter(c[0].metadata.group_id for c in self.calls
                            if c and c[0].metadata.message_type == wire.MSG_SECAGG))


def faults(*, refuse: dict[tuple[int, str], set[int]] | None = None,
           offline: dict[tuple[str, str], set[int]] | None = None) -> Any:
    """A client mod injecting faults into secure training messages (``train.secagg``), by partition id.

    ``refuse[(protocol round id, stage)]``: the part arrives with an unknown
    key, so the device refuses that part only; ``offline[(group, stage)]``:
    a message of that round holding a part of that stage fails as a whole.
    A mod, not a ClientApp of its own, so the app keeps every handler of the
    real one (secure evaluation included) and only the faults differ.
    """
    refuse, offline = refuse or {}, offline or {}

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        if msg.metadata.message_type == wire.MSG_SECAGG:
            pid = int(context.node_config["partition-id"])
            for stage in parts_of(msg):
                if pid in offline.get((msg.metadata.group_id, stage), set()):
                    raise RuntimeError("device went offline")
                if pid in refuse.get((round_of(msg, stage), stage), set()):
                    record = msg.content.config_records[wire.secagg_record(stage)]
                    msg.content[wire.secagg_record(stage)] = ConfigRecord({**dict(record.items()), "bogus": 1})
        return call_next(msg, context)

    return mod


def _updates(cfg: RunConfig, logs: Path) -> Any:
    """A client mod: before a device answers a mask part, train once more on a copy of its state (training
    is deterministic) and keep the plain update it is about to mask (``<round>-<node>.npz``)."""

    def capture(msg: Message, context: Context, call_next: Any) -> Message:
        if msg.metadata.message_type == wire.MSG_SECAGG and wire.SECAGG_MASK in parts_of(msg):
            out = train_device(msg, context, copy.deepcopy(load_state(context)), simulation_source)
            np.savez(logs / f"{msg.metadata.group_id}-{context.node_id}.npz", **flatten_update(out.update.segments()))
        return call_next(msg, context)

    return capture


def _simulate(main: Any, client: ClientApp) -> None:
    app = ServerApp()
    app.main()(main)
    run_simulation(server_app=app, client_app=client, num_supernodes=N_DEVICES, backend_config=BACKEND)


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
    # auto: the security bound (fedrec.secagg.graph.secure_degree); the complete graph below ~40 devices
    assert [neighbours_for(spec, n) for n in (2, 10, 50, 100, 943)] == ["all", "all", 37, 46, 96]
    fixed = RunConfig.from_flat({"secagg.neighbours": 7}).secagg
    assert [neighbours_for(fixed, n) for n in (5, 9, 10, 100)] == ["all", "all", "all", 46]  # raised to the bound
    wide = RunConfig.from_flat({"secagg.neighbours": 61}).secagg
    assert [neighbours_for(wide, n) for n in (99, 100)] == [60, 61]
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


def _probe(cfg: RunConfig, logs: Path) -> Any:
    """A client mod: after a device masked, keep its user factor and rows (``<round>-<node>.npz``)."""

    def probe(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        if wire.SECAGG_MASK in parts_of(msg) and not reply.has_error() and wire.SECAGG_MASK in parts_of(reply):
            state = context.state.array_records[wire.STATE_LOCAL]
            (factor,) = [v.numpy() for k, v in state.items() if k.endswith(".factor")]
            rows = simulation_source(context, cfg).train()
            rnd = msg.content.config_records[wire.RECORD_CONFIG][wire.CFG_ROUND]
            np.savez(logs / f"{rnd}-{context.node_id}.npz", factor=factor, items=rows.items, ratings=rows.ratings)
        return reply

    return probe


def test_secure_round_matches_plain_and_hides_everything(tmp_path: Path) -> None:
    """One stand-alone round (four trips) both ways from the same table; the secure replies are checked for leaks."""
    cfg = RunConfig.from_flat({**SMALL, "secagg.pipeline": False})
    plain_cfg = RunConfig.from_flat({**SMALL, "secagg.pipeline": False, "secagg.enabled": False})
    box: dict[str, Any] = {}

    def main(grid: Grid, context: Context) -> None:
        rec = box["grid"] = WireGrid(grid)
        nodes = wait_for_nodes(rec, N_DEVICES, timeout=60)
        state = ServerState.start(catalogue_for(cfg).n_items, cfg.model, cfg.fed, global_mean=3.0)
        box["secure"] = secure_train_round(rec, cfg, state, nodes, 1)
        # Devices refuse a plain round of a secure run: the comparison round runs under a plain configuration.
        box["plain"] = _train_round(rec, plain_cfg, state, nodes, 1)
        stale = [m for m in rec.sent if parts_of(m) & {wire.SECAGG_SETUP, wire.SECAGG_MASK}]
        replays = [Message(m.content, dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type,
                           group_id="1") for m in (stale[0], stale[-1])]
        box["replayed"] = list(grid.send_and_receive(replays, timeout=60))
        box["nodes"] = nodes

    _simulate(main, make_client_app(mods=[_probe(cfg, tmp_path)], run_config=[cfg, plain_cfg]))
    rec, nodes = box["grid"], box["nodes"]
    secure, dropped, metrics = box["secure"]
    plain = box["plain"][0]
    assert secure.n_clients == plain.n_clients == N_DEVICES and dropped == []
    assert metrics == [{wire.MET_OK: 1.0}] * N_DEVICES
    assert len(rec.calls) == 5 and all(len(parts_of(m)) == 1 for m in rec.sent if parts_of(m))

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

    # Messages of a finished round are refused, part by part.
    assert len(box["replayed"]) == 2 and not any(r.has_error() for r in box["replayed"])
    for reply in box["replayed"]:
        errors = errors_of(reply)
        assert errors and all("refused" in reason for reason in errors.values()) and not parts_of(reply)

    _assert_replies_hide_the_devices(rec, nodes, tmp_path, rounds=1)


def test_pipelined_rounds_match_plain_in_two_trips_and_hide_everything(tmp_path: Path) -> None:
    """Four pipelined rounds: each secure sum, and the table it gives, equal the plain ones within the
    quantization bound; a steady-state round is two trips, each device getting one message with both parts."""
    cfg = RunConfig.from_flat(SMALL)
    rounds, lr = 4, cfg.fed.server.lr
    updates = tmp_path / "updates"
    updates.mkdir()
    real = make_client_app(mods=[_probe(cfg, tmp_path)], run_config=cfg)
    capturing = ClientApp(mods=[RunConfigMod.of([cfg])])  # capture() parses the downlink before real() runs

    def capture(msg: Message, context: Context) -> Message:
        """Train once more on a copy of the state (training is deterministic): the plain update that gets masked."""
        if wire.SECAGG_MASK in parts_of(msg):
            out = train_device(msg, context, copy.deepcopy(load_state(context)), simulation_source)
            rnd = msg.content.config_records[wire.RECORD_CONFIG][wire.CFG_ROUND]
            np.savez(updates / f"{rnd}-{context.node_id}.npz", **flatten_update(out.update.segments()))
        return real(msg, context)

    capturing.train(wire.MSG_SECAGG.split(".")[1])(capture)
    box: dict[str, Any] = {"rounds": []}

    def main(grid: Grid, context: Context) -> None:
        rec = box["grid"] = WireGrid(grid)
        nodes = box["nodes"] = wait_for_nodes(rec, N_DEVICES, timeout=60)
        state = ServerState.start(catalogue_for(cfg).n_items, cfg.model, cfg.fed, global_mean=3.0)
        secure = SecureRounds(rec, cfg)
        for rnd in range(1, rounds + 1):
            before, calls = copy.deepcopy(state), len(rec.calls)
            sums, dropped, _ = secure.train(state, nodes, rnd, next_cohort=nodes if rnd < rounds else None)
            state.apply(sums)
            box["rounds"].append((before, sums, dropped, len(rec.calls) - calls, copy.deepcopy(state.glob)))
        secure.close()

    _simulate(main, capturing)
    rec = box["grid"]
    assert [r[3] for r in box["rounds"]] == [4, 2, 2, 2]
    for call in rec.calls[2:]:
        assert len({m.metadata.dst_node_id for m in call}) == len(call) == N_DEVICES
    for call in rec.calls[2:-2]:  # trips A and B of rounds 1-3 carry both rounds' parts
        assert {frozenset(parts_of(m)) for m in call} in ({frozenset({wire.SECAGG_MASK, wire.SECAGG_SETUP})},
                                                          {frozenset({wire.SECAGG_UNMASK, wire.SECAGG_SHARE})})
    quant = quant_config_for(n_items=N_ITEMS, dim=DIM, clip=1.0, bits=32, max_count=1, cohort=N_DEVICES)
    bound = {s.name: N_DEVICES / s.scale for s in quant.segments if s.scale is not None}
    for rnd, (before, sums, dropped, _, after) in enumerate(box["rounds"], start=1):
        assert dropped == [] and sums.n_clients == N_DEVICES
        plain = [dict(np.load(f)) for f in sorted(updates.glob(f"{rnd}-*.npz"))]
        assert len(plain) == N_DEVICES
        want = {k: sum(np.clip(u[k].astype(np.float64), -1.0, 1.0) for u in plain) for k in bound}
        got = {"item_factors": sums.item_factors.ravel(), "item_bias": sums.item_bias, "counts": sums.counts}
        for name in bound:
            assert np.abs(got[name] - want[name]).max() <= bound[name] + 1e-9, (rnd, name)
        before.apply(RoundSums(want["item_factors"].reshape(N_ITEMS, DIM), want["item_bias"], want["counts"],
                               N_DEVICES))
        for name in ("item_factors", "item_bias"):
            diff = np.abs(getattr(after, name).astype(np.float64) - getattr(before.glob, name))
            assert diff.max() <= lr * bound[name] + 1e-5, (rnd, name)
    _assert_replies_hide_the_devices(rec, box["nodes"], tmp_path, rounds=rounds)


def _assert_replies_hide_the_devices(rec: WireGrid, nodes: list[int], logs: Path, *, rounds: int) -> None:
    masked_bytes = b""
    factors = [np.load(f)["factor"] for f in logs.glob("*.npz")]
    assert len(factors) == N_DEVICES * rounds and sum(np.linalg.norm(f) > 0 for f in factors) >= len(factors) - 2
    answered: Counter[str] = Counter()
    assert len(rec.answered()) == len(rec.of_type(wire.MSG_SECAGG))
    for reply in rec.answered():
        stages = parts_of(reply)
        answered.update(stages)
        assert not errors_of(reply)
        expected = {wire.secagg_record(s) for s in stages}
        if wire.SECAGG_MASK in stages:
            expected |= {wire.secagg_arrays_record(wire.SECAGG_MASK), wire.RECORD_METRICS}
        assert set(reply.content.keys()) == expected
        for stage in stages:
            config = dict(reply.content.config_records[wire.secagg_record(stage)])
            assert set(config) == REPLY_KEYS[stage]
            for value in config.values():  # integers are round and node ids only: no item id list
                ints = value if isinstance(value, list) and value and isinstance(value[0], int) else []
                assert set(ints) <= set(nodes)
                assert not isinstance(value, float) and not (isinstance(value, list) and value
                                                             and isinstance(value[0], float))
        if wire.SECAGG_MASK in stages:
            assert dict(reply.content.metric_records[wire.RECORD_METRICS]) == {wire.MET_OK: 1.0}
            masked_bytes += _assert_masked_hides(reply, logs)
    assert answered == {s: N_DEVICES * rounds for s in wire.SECAGG_STAGES}
    assert chi_square(masked_bytes) < CHI2_LIMIT


def _assert_masked_hides(reply: Message, logs: Path) -> bytes:
    arrays = reply.content.array_records[wire.secagg_arrays_record(wire.SECAGG_MASK)]
    (masked,) = [v.numpy() for v in arrays.values()]
    assert masked.dtype == np.uint32 and masked.shape == (N_ITEMS * (DIM + 2),)
    rnd = round_of(reply, wire.SECAGG_MASK) // 2
    device = np.load(logs / f"{rnd}-{reply.metadata.src_node_id}.npz")
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


def test_a_fault_schedule_keeps_every_handler_of_the_real_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault mod sits on the real ClientApp: every message type reaches the same handler, faults or not.

    A fault wrapper that registered only the training handlers once made every
    device fail the secure evaluation ending a run (no handler for ``evaluate.secagg``).
    """
    for name in ("_run_id", "_task_id", "_node_id"):  # what a Flower process sets before it builds messages
        monkeypatch.setattr(TaskIdentity, name, 1)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": N_DEVICES},
                      state=RecordDict(), run_config={})
    flaky = make_client_app(mods=[faults(offline={("1", wire.SECAGG_MASK): {0}})])
    real = make_client_app()
    for kind in (wire.MSG_TRAIN, wire.MSG_EVALUATE, wire.MSG_SECAGG, wire.MSG_SECAGG_EVAL):
        outcomes = []
        for app in (real, flaky):
            try:
                app(Message(RecordDict(), dst_node_id=7, message_type=kind, group_id="1"), context)
            except Exception as exc:  # noqa: BLE001 - the handler's own refusal of an empty message
                outcomes.append((type(exc), str(exc)))
        assert len(outcomes) == 2 and outcomes[0] == outcomes[1], kind
        assert "registered" not in outcomes[1][1], kind
    mask = Message(RecordDict({wire.secagg_record(wire.SECAGG_MASK): ConfigRecord({"round_id": 3})}),
                   dst_node_id=7, message_type=wire.MSG_SECAGG, group_id="1")
    with pytest.raises(RuntimeError, match="offline"):
        flaky(mask, context)


def _spy_sums(monkeypatch: pytest.MonkeyPatch) -> list[RoundSums]:
    """The sums each training round applies to the table, in order (the server's own ``ServerState.apply``)."""
    applied: list[RoundSums] = []
    apply = ServerState.apply

    def spy(self: ServerState, sums: RoundSums, **kwargs: Any) -> Any:
        applied.append(copy.deepcopy(sums))
        return apply(self, sums, **kwargs)

    monkeypatch.setattr(ServerState, "apply", spy)
    return applied


def _assert_exact_sums(rec: WireGrid, applied: list[RoundSums], updates: Path, cfg: RunConfig,
                       ids: dict[int, int]) -> None:
    """Each round's sum is the plain sum of the clipped updates of exactly the devices whose masked input
    the server accepted (within the quantization bound); an aborted round applies nothing."""
    quant = quant_config_for(n_items=N_ITEMS, dim=cfg.model.dim, clip=1.0, bits=32, max_count=1, cohort=N_DEVICES)
    specs = {s.name: s for s in quant.segments}
    assert len(applied) == len(ids)
    for rnd, sums in enumerate(applied, start=1):
        masked = sorted(r.metadata.src_node_id for r in rec.answered() if r.metadata.group_id == str(rnd)
                        and wire.SECAGG_MASK in parts_of(r) and round_of(r, wire.SECAGG_MASK) == ids[rnd])
        got = {"item_factors": sums.item_factors.ravel(), "item_bias": sums.item_bias, "counts": sums.counts}
        if sums.n_clients == 0:
            assert all(not v.any() for v in got.values()), rnd
            continue
        assert sums.n_clients == len(masked), rnd
        plain = [dict(np.load(updates / f"{rnd}-{node}.npz")) for node in masked]
        for name, spec in specs.items():
            assert spec.scale is not None
            want = sum(np.clip(u[name].astype(np.float64), spec.lo, spec.hi) for u in plain)
            assert np.abs(got[name] - want).max() <= len(masked) / spec.scale + 1e-9, (rnd, name)


def test_dropouts_at_every_stage_and_an_aborted_round(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Four-trip rounds. Round 1: one device refuses each stage, the round completes with the exact sum of
    the 21 that masked; round 2: too many fail at the mask stage, the round aborts and the table stays as it
    was; round 3 runs normally, and the secure evaluation after it gets every device."""
    cfg = RunConfig.from_flat({**SMALL, "model.dim": 4, "rounds": 3, "eval-every": 5, "secagg.pipeline": False})
    ids = {n: protocol_round_id(n, prestarted=False) for n in (1, 2, 3)}
    refuse = {(ids[1], wire.SECAGG_SETUP): {0}, (ids[1], wire.SECAGG_SHARE): {1}, (ids[1], wire.SECAGG_UNMASK): {3}}
    offline = {("1", wire.SECAGG_MASK): {2}, ("2", wire.SECAGG_MASK): set(range(14))}
    flaky = make_client_app(run_config=cfg, mods=[faults(refuse=refuse, offline=offline), _updates(cfg, tmp_path)])
    applied = _spy_sums(monkeypatch)
    box: dict[str, Any] = {}

    def main(grid: Grid, context: Context) -> None:
        box["grid"] = WireGrid(grid)
        box["history"] = train_over_grid(box["grid"], cfg, catalogue_for(cfg)).history

    with caplog.at_level(logging.INFO, logger="fedrec"):
        _simulate(main, flaky)
    history, rec = box["history"], box["grid"]
    assert [r["survivors"] for r in history] == [N_DEVICES - 3, 0, N_DEVICES]
    assert [r["dropouts"] for r in history] == [3, N_DEVICES, 0]
    assert rec.trips_per_group() == {"1": 4, "2": 3, "3": 4}
    assert {round_of(m, s) for m in rec.sent for s in parts_of(m)
            if m.metadata.message_type == wire.MSG_SECAGG} == set(ids.values())
    refused = [errors_of(r) for r in rec.answered() if errors_of(r)]
    assert sorted(s for e in refused for s in e) == [wire.SECAGG_SETUP, wire.SECAGG_SHARE, wire.SECAGG_UNMASK]
    assert f"round {ids[2]} aborted: 10 clients sent masked input, threshold t=13 not met" in caplog.text
    _assert_exact_sums(rec, applied, tmp_path, cfg, ids)
    _assert_tables(rec, history, moved=("1", "2"), kept=("2", "3"), masks=3 * N_DEVICES - 2)


def _assert_tables(rec: WireGrid, history: list[dict[str, Any]], *, moved: tuple[str, str], kept: tuple[str, str],
                   masks: int) -> None:
    training = [m for m in rec.sent if m.metadata.message_type == wire.MSG_SECAGG and wire.SECAGG_MASK in parts_of(m)]
    by_round = {m.metadata.group_id: m.content.array_records[wire.RECORD_GLOBAL] for m in training}
    assert len(training) == masks
    for name in ("item_factors", "item_bias"):
        assert not np.array_equal(by_round[moved[0]][name].numpy(), by_round[moved[1]][name].numpy())
        np.testing.assert_array_equal(by_round[kept[0]][name].numpy(), by_round[kept[1]][name].numpy())
    # the run ends with a secure evaluation every device answers, the fault mod notwithstanding
    evaluations = rec.of_type(wire.MSG_SECAGG_EVAL)
    assert not any(r.has_error() or errors_of(r) for r in evaluations)
    assert sum(wire.SECAGG_MASK in parts_of(r) for r in evaluations) == N_DEVICES and "rmse" in history[-1]


def test_pipelined_dropouts_in_either_round_at_every_stage(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelined rounds with a fault in every part of both rounds.

    Round 1 (own setup and share, then pre-starting round 2): one device refuses each of its four stages
    and one each of round 2's setup and share, whose other part still counts; it completes with 21.
    Round 2: 14 devices refuse the mask part, so it aborts (the table stays) while round 3's setup in the
    same messages goes through. Round 3: one device is offline for the mask trip (losing round 4's setup
    too) and 12 refuse round 4's setup, so round 4's pre-start aborts; round 3 completes with 23.
    Round 4 runs its own four trips with everyone. Every completed round's sum is exact.
    """
    cfg = RunConfig.from_flat({**SMALL, "model.dim": 4, "rounds": 4, "eval-every": 5})
    ids = {n: protocol_round_id(n, prestarted=n > 1) for n in (1, 2, 3)}
    refuse = {(ids[1], wire.SECAGG_SETUP): {0}, (ids[1], wire.SECAGG_SHARE): {1}, (ids[1], wire.SECAGG_MASK): {2},
              (ids[1], wire.SECAGG_UNMASK): {3}, (ids[2], wire.SECAGG_SETUP): {4}, (ids[2], wire.SECAGG_SHARE): {5},
              (ids[2], wire.SECAGG_MASK): set(range(6, 20)),
              (protocol_round_id(4, prestarted=True), wire.SECAGG_SETUP): set(range(12))}
    flaky = make_client_app(run_config=cfg, mods=[faults(refuse=refuse, offline={("3", wire.SECAGG_MASK): {20}}),
                                  _updates(cfg, tmp_path)])
    applied = _spy_sums(monkeypatch)
    box: dict[str, Any] = {}

    def main(grid: Grid, context: Context) -> None:
        box["grid"] = WireGrid(grid)
        box["history"] = train_over_grid(box["grid"], cfg, catalogue_for(cfg)).history

    with caplog.at_level(logging.INFO, logger="fedrec"):
        _simulate(main, flaky)
    history, rec = box["history"], box["grid"]
    assert [r["survivors"] for r in history] == [N_DEVICES - 3, 0, N_DEVICES - 1, N_DEVICES]
    assert [r["dropouts"] for r in history] == [3, N_DEVICES, 1, 0]
    assert rec.trips_per_group() == {"1": 4, "2": 2, "3": 2, "4": 4}
    trip_a = [r for r in rec.answered() if r.metadata.group_id == "1" and wire.SECAGG_MASK in parts_of(r)]
    mixed = [r for r in trip_a if wire.SECAGG_SETUP in errors_of(r)]
    assert len(mixed) == 1 and wire.SECAGG_MASK in parts_of(mixed[0])  # its mask part still counted
    assert "round 4: its pre-started setup and share aborted" in caplog.text
    assert f"round {ids[2]} aborted: 8 clients sent masked input, threshold t=13 not met" in caplog.text
    _assert_exact_sums(rec, applied, tmp_path, cfg, {**ids, 4: protocol_round_id(4, prestarted=False)})
    _assert_tables(rec, history, moved=("1", "2"), kept=("2", "3"), masks=22 + 22 + N_DEVICES + N_DEVICES)


def test_user_level_dp_with_pipelined_rounds_stops_on_budget_and_abandons_cleanly(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Poisson cohorts drawn by the privacy policy, pipelined; the budget stops the run before round 3,
    whose pre-started setup and share are abandoned without any error.

    The noise is calibrated for all 5 rounds, so the budget is made to run out after two accountant
    steps: exactly the policy's stop, earlier.
    """
    from fedrec.federated.policy import UserLevelPolicy

    allows = UserLevelPolicy.allows_next_round

    def two_rounds_of_budget(self: UserLevelPolicy) -> bool:
        return allows(self) and self.accountant.total_steps < 2

    monkeypatch.setattr(UserLevelPolicy, "allows_next_round", two_rounds_of_budget)
    cfg = RunConfig.from_flat({**SMALL, "model.dim": 4, "rounds": 5, "eval-every": 10, "dp.unit": "user",
                               "dp.epsilon": 8.0, "dp.cohort-rate": 0.5, "dp.delta": 1e-3})
    box: dict[str, Any] = {}

    def main(grid: Grid, context: Context) -> None:
        box["grid"] = WireGrid(grid)
        box["history"] = train_over_grid(box["grid"], cfg, catalogue_for(cfg)).history

    with caplog.at_level(logging.INFO, logger="fedrec"):
        _simulate(main, make_client_app(run_config=cfg))
    history, rec = box["history"], box["grid"]
    assert [r["round"] for r in history] == [1, 2]
    assert all(r["dp_unit"] == "user" and 0 < r["epsilon"] <= cfg.dp.epsilon for r in history)
    assert all(0 < r["sampled"] < N_DEVICES and r["survivors"] == r["sampled"] for r in history)
    setups = {round_of(m, wire.SECAGG_SETUP): len(m.content.config_records[wire.secagg_record(wire.SECAGG_SETUP)]
                                                   ["participants"]) for m in rec.sent
              if wire.SECAGG_SETUP in parts_of(m)}
    masks = {round_of(m, wire.SECAGG_MASK) for m in rec.sent if wire.SECAGG_MASK in parts_of(m)}
    assert setups[protocol_round_id(1, prestarted=False)] == history[0]["sampled"]
    assert setups[protocol_round_id(2, prestarted=True)] == history[1]["sampled"]
    assert protocol_round_id(3, prestarted=True) in setups and protocol_round_id(3, prestarted=True) not in masks
    assert rec.trips_per_group() == {"1": 4, "2": 2}
    assert "pre-started secure aggregation (id 6) abandoned" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("fedrec")]
    assert not any(r.has_error() or errors_of(r) for r in rec.of_type(wire.MSG_SECAGG))


WRMF = {**SMALL, "protocol": "R1", "model.loss": "wrmf", "model.reg": 1.0,
        "model.confidence": 3.0, "model.recency-boost": 0.0, "strategy.optimizer": "sgd",
        "strategy.server-lr": 1.0, "rounds": 2, "eval-every": 2, "secagg.clip": 64.0, "min-clients": N_DEVICES}


def test_wrmf_secure_rounds_equal_the_reference_loop_and_hide_p_p_t(tmp_path: Path) -> None:
    """``model.loss = "wrmf"`` under secure aggregation: ``p p^T`` and the curvature ride in the masked vector.

    The table after two pipelined rounds is the plain reference loop's within the quantization
    bound; every masked vector is as long as the five segments, uniform, and holds no scaled copy
    of the user factor or of ``p p^T`` in any float reading.
    """
    cfg = RunConfig.from_flat(WRMF)
    rec, result = train_on_simulation_engine(cfg, N_DEVICES, grid_type=WireGrid,
                                             client_app=make_client_app(mods=[_probe(cfg, tmp_path)], run_config=cfg))
    assert [(r["round"], r["survivors"]) for r in result.history[-1:]] == [(2, N_DEVICES)]
    ref_state, ref_history = train_in_process(load_run_dataset(cfg.data), cfg.model, cfg.fed)
    np.testing.assert_allclose(result.state.glob.item_factors, ref_state.glob.item_factors, atol=1e-3)
    assert result.history[-1]["hr@10"] == pytest.approx(ref_history[-1]["hr@10"], abs=1e-9)

    masks = [r for r in rec.answered() if wire.SECAGG_MASK in parts_of(r)]
    assert len(masks) == 2 * N_DEVICES
    masked_bytes = b""
    for reply in masks:
        (masked,) = [v.numpy() for v in reply.content.array_records[
            wire.secagg_arrays_record(wire.SECAGG_MASK)].values()]
        assert masked.shape == (N_ITEMS * (DIM + 2) + DIM * DIM + N_ITEMS,)
        rnd = round_of(reply, wire.SECAGG_MASK) // 2
        p = np.load(tmp_path / f"{rnd}-{reply.metadata.src_node_id}.npz")["factor"].astype(np.float64)
        assert np.linalg.norm(p) > 0
        for view in float_views(masked):
            assert max_cosine(view, p) < 0.999, "a scaled copy of the user factor left the device"
            assert max_cosine(view, np.outer(p, p).ravel()) < 0.999, "p p^T left the device"
        masked_bytes += masked.tobytes()
    assert chi_square(masked_bytes) < CHI2_LIMIT


def test_a_server_that_drops_the_wrmf_segments_gets_no_masked_input(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A server whose setup lays out only the three fixed segments: every device refuses its mask part
    (its update has ``p p^T`` and the curvature the layout has no room for), so nothing is summed and
    the table does not move."""
    monkeypatch.setattr(SecureRounds, "extra_segments", lambda self, state: ())
    cfg = RunConfig.from_flat({**WRMF, "rounds": 1, "eval-every": 5})
    with caplog.at_level(logging.ERROR, logger="fedrec"):
        rec, result = train_on_simulation_engine(cfg, N_DEVICES, grid_type=WireGrid)
    refused = [errors_of(r)[wire.SECAGG_MASK] for r in rec.of_type(wire.MSG_SECAGG)
               if wire.SECAGG_MASK in errors_of(r)]
    assert len(refused) == N_DEVICES and all(wire.ARRAY_USER_GRAM in reason for reason in refused), refused[:2]
    leaked = [list(r.content.keys()) for r in rec.of_type(wire.MSG_SECAGG) if wire.SECAGG_MASK in parts_of(r)]
    assert not leaked, leaked[:3]
    assert "secure aggregation aborted" in caplog.text
    start = ServerState.start(N_ITEMS, cfg.model, cfg.fed, global_mean=0.0)
    np.testing.assert_array_equal(result.state.glob.item_factors, start.glob.item_factors)
