"""``fedrec server``: run the Deployment Engine for real devices, from one state folder.

Subcommands, in the order an operator uses them::

    tls      make a CA and a server certificate (SANs = --host names/addresses)
    keys     make device authentication keys (P-384, OpenSSH) and register them, and
             per device an identity folder certified by the enrolment authority;
             make the Ed25519 model-signing key and the authority key on first use
    start    start flower-superlink: TLS, persistent database, node authentication
    run      submit a run (config file + --set overrides) with 'flwr run'
    follow   live view of a run (round, cohort, survivors, dropouts, metrics, epsilon)
    resume   continue a stopped or crashed run from its last checkpoint
    ls       runs of this state folder with their status
    export   the global model as a signed artifact (with its round) for devices
    stop     stop a run (NAME), or the SuperLink (no NAME)

Everything lives under ``--state`` (default ``$FEDREC_STATE`` or ``./fedrec-state``):
``tls/``, ``keys/``, ``authority/`` (the enrolment authority: in production a
separate party's, see :mod:`fedrec.deploy.keys`), ``devices/``, ``superlink/`` (pid, log, database), ``flwr/``
(the Flower CLI's home: never ``~/.flwr``) and ``runs/<name>/``. Errors are one
line on stderr with exit code 2; ``--json`` prints exactly one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrec.data.spec import load_run_dataset
from fedrec.deploy import runspec
from fedrec.deploy.keys import (
    AUTHORITY_KEY,
    load_authority,
    load_signing_key,
    make_authority,
    make_device_identity,
    make_device_key,
    make_signing_key,
)
from fedrec.deploy.tls import sans, write_tls
from fedrec.errors import CheckpointError, DeployError, FedRecError
from fedrec.runconfig import RunConfig, dump_toml, load_toml, parse_overrides
from fedrec.secagg.crypto.identity import AUTHORITY_FILE, load_authority_key
from fedrec.store.artifact import sign_model, write_model
from fedrec.store.atomic import atomic_write_text
from fedrec.store.checkpoint import load_checkpoint

from . import flower
from .flower import State

log = logging.getLogger("fedrec.server")

AUTHORITY_KEY_SETTING = "secagg.authority-key"


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text)


# ---------------------------------------------------------------- tls / keys / start / stop


def cmd_tls(args: argparse.Namespace, state: State) -> int:
    hosts = args.host or ["127.0.0.1", "localhost"]
    files = write_tls(state.root / "tls", hosts=hosts, days=args.days, force=args.force)
    _emit(args, {"ca": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key), "hosts": hosts,
                 "days": args.days},
          f"CA {files.ca_cert} and server certificate {files.cert} for {', '.join(hosts)} ({args.days} days)\n"
          f"give devices {files.ca_cert}; keep {files.ca_key} and {files.key} private")
    return 0


def cmd_keys(args: argparse.Namespace, state: State) -> int:
    names = list(args.device) + [f"{args.prefix}{i}" for i in range(args.count)]
    if (names or args.register) and not args.no_register:
        flower.running_superlink(state)  # before any key is made: a rerun must not find half the keys
    signing = state.keys / "signing.key"
    if not signing.exists() or args.new_signing_key:
        # Replacing it means devices provisioned with signing.pub refuse every later export.
        make_signing_key(state.keys, force=args.new_signing_key)
    authority_key = state.root / "authority" / AUTHORITY_KEY
    if not authority_key.exists():
        # Never replaced here: a new authority would orphan every identity already issued.
        make_authority(authority_key.parent)
    authority = load_authority(authority_key)
    made = [make_device_key(state.devices, n, force=args.force) for n in names]
    identities = {n: make_device_identity(state.devices, n, authority, force=args.force) for n in names}
    publics = [k.public for k in made] + list(args.register)
    registered: dict[str, int] = {}
    if publics and not args.no_register:
        registered = flower.register_keys(state, publics)
        _save_registry(state, registered)
    _emit(args, {"signing_public_key": str(state.keys / "signing.pub"),
                 "authority_public_key": str(authority_key.parent / AUTHORITY_FILE),
                 "devices": {k.name: {"private": str(k.private), "public": str(k.public),
                                      "identity": str(identities[k.name])} for k in made},
                 "registered": registered},
          "\n".join([f"model-signing key: {signing} (public half {state.keys / 'signing.pub'})",
                      f"enrolment authority: {authority_key} (in production: a separate party's key)",
                      *(f"device {k.name}: {k.private} and {identities[k.name]}/ (give both to the device), "
                        f"{k.public}" for k in made),
                      *(f"registered {p} as SuperNode {n}" for p, n in registered.items())]))
    return 0


def _save_registry(state: State, registered: dict[str, int]) -> None:
    path = state.devices / "registered.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    atomic_write_text(path, json.dumps({**old, **registered}, indent=1))


def cmd_start(args: argparse.Namespace, state: State) -> int:
    connect = args.connect_host or ("127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host)
    info = flower.start_superlink(state, host=args.host, port=args.port, connect_host=connect,
                                  timeout=args.timeout)
    _emit(args, info, f"SuperLink running (pid {info['pid']}) on https://{info['address']}; log {info['log']}")
    return 0


def cmd_stop(args: argparse.Namespace, state: State) -> int:
    if args.name:
        record = runspec.RunRecord.load(state.run_dir(runspec.check_name(args.name)))
        flower.stop_run(state, record.flower_runs[-1])
        _emit(args, {"stopped_run": args.name, "flower_run": record.flower_runs[-1]},
              f"stopped run {args.name} (Flower run {record.flower_runs[-1]})")
        return 0
    pid = flower.stop_superlink(state)
    if pid is None:
        raise DeployError(f"no SuperLink runs from {state.root}")
    _emit(args, {"stopped_superlink": pid}, f"stopped the SuperLink (pid {pid}) and its helpers")
    return 0


# ---------------------------------------------------------------- run / resume


def resolve_config(args: argparse.Namespace, run_dir: Path, *, authority: Path | None = None) -> RunConfig:
    """File, then ``--set``; the run folder is this state's; validated before anything is submitted.

    A secure run's ``secagg.authority-key`` defaults to ``authority`` (the state
    folder's ``authority/authority.pub``) when that file exists, so the server
    verifies the devices' key advertisements too; a key file given is read
    here, so a bad one fails before the run is submitted.
    """
    flat: dict[str, Any] = load_toml(args.config) if args.config else {}
    flat.update(parse_overrides(args.overrides))
    env_dir = os.environ.get("FEDREC_DATA_DIR")
    if env_dir and not flat.get("data-dir") and flat.get("dataset", "synthetic") != "synthetic":
        flat["data-dir"] = env_dir
    flat["run-dir"] = str(run_dir.resolve())
    cfg = RunConfig.from_flat(flat)
    if cfg.secagg.enabled and not cfg.secagg.authority_key and authority is not None and authority.exists():
        cfg = RunConfig.from_flat({**flat, AUTHORITY_KEY_SETTING: str(authority.resolve())})
    if cfg.secagg.enabled and cfg.secagg.authority_key:
        load_authority_key(cfg.secagg.authority_key)
    return cfg


def cmd_run(args: argparse.Namespace, state: State) -> int:
    name = runspec.check_name(args.name or time.strftime("run-%Y%m%d-%H%M%S"))
    folder = state.run_dir(name)
    if (folder / runspec.RUN_JSON).exists():
        raise DeployError(f"{folder}: run {name!r} exists ('fedrec server resume {name}' continues it)")
    cfg = resolve_config(args, folder, authority=state.root / "authority" / AUTHORITY_FILE)
    load_run_dataset(cfg.data)
    app = flower.app_dir(args.app)
    link = flower.running_superlink(state)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.toml", dump_toml(cfg.flat, comment=f"run {name}: resolved configuration"))
    run_id = flower.submit(state, app, runspec.envelope(cfg, resume=False), folder)
    runspec.RunRecord(name, ()).attempt(run_id, link).save(folder)
    _emit(args, {"name": name, "flower_run": run_id, "run_dir": str(folder)},
          f"run {name} submitted (Flower run {run_id}); follow it: fedrec server follow {name}")
    return 0


def check_resumable(folder: Path, cfg: RunConfig) -> int:
    """The checkpoint's round, refused if missing, corrupted or of another model shape."""
    path = folder / runspec.CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from (the run never finished a round)")
    ckpt, _ = load_checkpoint(path)
    n_items = load_run_dataset(cfg.data).n_items
    if ckpt.glob.item_factors.shape != (n_items, cfg.model.dim):
        raise CheckpointError(f"{path}: table {ckpt.glob.item_factors.shape} does not match the configuration "
                              f"({n_items} items, model.dim {cfg.model.dim})")
    return ckpt.round


def cmd_resume(args: argparse.Namespace, state: State) -> int:
    folder = state.run_dir(runspec.check_name(args.name))
    record = runspec.RunRecord.load(folder)
    cfg = RunConfig.from_flat(load_toml(folder / "config.toml"))
    done = check_resumable(folder, cfg)
    if done >= cfg.fed.rounds:
        raise DeployError(f"run {args.name}: all {cfg.fed.rounds} rounds are done; nothing to resume")
    link = flower.running_superlink(state)
    last = flower.flower_runs(state).get(record.flower_runs[-1], {})
    if _active(last):
        if not record.orphaned(link):
            raise DeployError(f"run {args.name}: Flower run {record.flower_runs[-1]} is still {last['status']}; "
                              f"'fedrec server stop {args.name}' first")
        # Its ServerApp died with the SuperLink it ran under; tell Flower's database so.
        try:
            flower.stop_run(state, record.flower_runs[-1])
        except DeployError as exc:
            log.warning("could not mark the orphaned Flower run %d stopped: %s", record.flower_runs[-1], exc)
    run_id = flower.submit(state, flower.app_dir(args.app), runspec.envelope(cfg, resume=True), folder)
    record.attempt(run_id, link).save(folder)
    _emit(args, {"name": args.name, "flower_run": run_id, "from_round": done},
          f"run {args.name} resumed from round {done} (Flower run {run_id})")
    return 0


# ---------------------------------------------------------------- ls / follow / export


def _active(row: dict[str, Any]) -> bool:
    return str(row.get("status", "")).startswith(("running", "starting", "pending"))


def _summaries(state: State, names: list[str] | None = None) -> list[dict[str, Any]]:
    try:
        link: int | None = flower.running_superlink(state)
        runs = flower.flower_runs(state)
    except DeployError:
        runs, link = {}, None  # SuperLink down: the run folders still tell their story
    out = []
    folders = sorted(p for p in state.runs.glob("*") if (p / runspec.RUN_JSON).exists()) if state.runs.exists() else []
    for folder in folders:
        if names is not None and folder.name not in names:
            continue
        record = runspec.RunRecord.load(folder)
        row = runs.get(record.flower_runs[-1])
        status = str(row["status"]) if row else ("unreachable" if not runs else "unknown")
        if row and _active(row) and record.orphaned(link):
            status = "orphaned (its SuperLink was restarted)"
        out.append({**runspec.summary(folder, flower_status=status), "flower_runs": list(record.flower_runs)})
    return out


def cmd_ls(args: argparse.Namespace, state: State) -> int:
    rows = _summaries(state)
    if args.json:
        print(json.dumps({"runs": rows}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "state", "flower", "round", "epsilon", "dropouts", "attempts")
    for r in rows:
        eps = f"{r['epsilon']:.3f}" if isinstance(r["epsilon"], float) else "-"
        table.add_row(r["name"], r["state"], str(r["flower_status"]), f"{r['round']}/{r['rounds'] or '?'}", eps,
                      str(r["dropouts"]), str(len(r["flower_runs"])))
    Console().print(table)
    return 0


def _finished(row: dict[str, Any]) -> bool:
    return row["state"] in ("finished", "failed", "stopped") or str(row["flower_status"]).startswith("finished")


def cmd_follow(args: argparse.Namespace, state: State) -> int:
    name = runspec.check_name(args.name)
    runspec.RunRecord.load(state.run_dir(name))
    deadline = time.monotonic() + args.timeout if args.timeout else None

    def current() -> dict[str, Any]:
        return _summaries(state, [name])[0]

    if args.json:
        row = current()
        while not args.once and not _finished(row) and (deadline is None or time.monotonic() < deadline):
            time.sleep(args.interval)
            row = current()
        print(json.dumps(row))
        return 0
    _follow_live(current, interval=args.interval, once=args.once, deadline=deadline)
    return 0


def _follow_live(current: Callable[[], dict[str, Any]], *, interval: float, once: bool,
                 deadline: float | None) -> None:
    from rich.live import Live
    from rich.table import Table

    def render(row: dict[str, Any]) -> Table:
        table = Table(title=f"run {row['name']}: {row['state']} (Flower: {row['flower_status']})")
        for col in ("round", "cohort", "survivors", "dropouts (total)", "epsilon", *row["metrics"]):
            table.add_column(col)
        eps = f"{row['epsilon']:.4f}" if isinstance(row["epsilon"], float) else "-"
        table.add_row(f"{row['round']}/{row['rounds'] or '?'}", str(row["sampled"] or "-"),
                      str(row["survivors"] or "-"), str(row["dropouts"]), eps,
                      *(f"{v:.4f}" for v in row["metrics"].values()))
        return table

    row = current()
    with Live(render(row), refresh_per_second=2) as live:
        while not once and not _finished(row) and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval)
            row = current()
            live.update(render(row))


def cmd_export(args: argparse.Namespace, state: State) -> int:
    folder = state.run_dir(runspec.check_name(args.name))
    ckpt, _ = load_checkpoint(folder / runspec.CHECKPOINT)
    key = load_signing_key(args.signing_key or state.keys / "signing.key")
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = sign_model(ckpt.glob, round_=ckpt.round, run=args.name, signing_key=key, created=created)
    out = args.out or folder / f"model-r{ckpt.round}.fedrec"
    write_model(out, data)
    _emit(args, {"artifact": str(out), "round": ckpt.round, "bytes": len(data)},
          f"signed model of round {ckpt.round}: {out} ({len(data)} bytes); devices verify it with "
          f"{state.keys / 'signing.pub'}")
    return 0


# ---------------------------------------------------------------- argument parsing

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, State], int], str]] = {
    "tls": (cmd_tls, "make a CA and a server certificate"),
    "keys": (cmd_keys, "make and register device keys and identities (and the signing/authority keys)"),
    "start": (cmd_start, "start the SuperLink (TLS, database, node authentication)"),
    "run": (cmd_run, "submit a run from a config file"),
    "follow": (cmd_follow, "follow a run live"),
    "resume": (cmd_resume, "resume a run from its last checkpoint"),
    "ls": (cmd_ls, "list runs with their status"),
    "export": (cmd_export, "export the global model as a signed artifact"),
    "stop": (cmd_stop, "stop a run, or the SuperLink"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=Path(os.environ.get("FEDREC_STATE", "fedrec-state")),
                        help="server state folder (default: $FEDREC_STATE or ./fedrec-state)")
    parser.add_argument("--flwr-home", type=Path,
                        help="Flower home for the flwr CLI and the SuperLink (default <state>/flwr; e.g. ~/.flwr "
                             "to add the 'fedrec' connection to your own)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = {name: sub.add_parser(name, help=help_) for name, (_, help_) in COMMANDS.items()}
    for sp in p.values():
        sp.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p["tls"].add_argument("--host", action="append", default=[],
                          help="a DNS name or IP address devices use to reach the server (repeatable; "
                               "default 127.0.0.1 and localhost)")
    p["tls"].add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p["tls"].add_argument("--force", action="store_true", help="replace existing TLS files")
    p["keys"].add_argument("--device", action="append", default=[], metavar="NAME", help="a device to make a key for")
    p["keys"].add_argument("--count", type=int, default=0, help="make keys for COUNT devices PREFIX0..")
    p["keys"].add_argument("--prefix", default="device-", help="name prefix for --count (default device-)")
    p["keys"].add_argument("--register", action="append", default=[], type=Path, metavar="PUB",
                           help="also register a public key a device made itself (OpenSSH, repeatable)")
    p["keys"].add_argument("--no-register", action="store_true", help="make keys only (SuperLink not running)")
    p["keys"].add_argument("--force", action="store_true", help="replace existing device keys and identities")
    p["keys"].add_argument("--new-signing-key", action="store_true",
                           help="replace the model-signing key (devices must be given the new signing.pub)")
    p["start"].add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p["start"].add_argument("--port", type=int, default=8000, help="HTTPS port for all APIs (default 8000)")
    p["start"].add_argument("--connect-host", help="name this machine's CLI uses (must be in the certificate)")
    p["start"].add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the port")
    for name in ("run", "resume"):
        p[name].add_argument("--app", type=Path, help="the fedrec project folder (default: this checkout)")
    p["run"].add_argument("--config", type=Path, help="TOML file of run-config keys")
    p["run"].add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override one run-config key (repeatable)")
    p["run"].add_argument("--name", help="run name (default run-<time>)")
    for name in ("follow", "resume", "export"):
        p[name].add_argument("name", help="run name")
    p["stop"].add_argument("name", nargs="?", help="run to stop (default: stop the SuperLink)")
    p["follow"].add_argument("--once", action="store_true", help="show the current state and return")
    p["follow"].add_argument("--interval", type=float, default=1.0, help="refresh interval in seconds")
    p["follow"].add_argument("--timeout", type=float, default=0.0, help="give up after SECONDS (0: never)")
    p["export"].add_argument("--out", type=Path, help="artifact file (default runs/NAME/model-r<round>.fedrec)")
    p["export"].add_argument("--signing-key", type=Path, help="Ed25519 key (default keys/signing.key)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        home = args.flwr_home.expanduser() if args.flwr_home else None
        return COMMANDS[args.command][0](args, State(args.state, home))
    except FedRecError as exc:
        print(f"fedrec server {args.command}: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["main", "sans"]
