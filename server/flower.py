"""Flower's own programs, driven for one state folder: SuperLink, ``flwr run/ls/stop``, ``flwr supernode register``.

Every Flower CLI call gets ``FLWR_HOME=<state>/flwr``, whose ``config.toml``
names one connection, ``fedrec``, with the SuperLink's address and CA
certificate; the user's ``~/.flwr`` is never read or written. The SuperLink
itself runs with the same ``FLWR_HOME`` (where it unpacks app bundles).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.deploy.procs import read_pid, start_detached, stop_tree, wait_for_port
from fedrec.deploy.tls import TLSFiles, check_server_tls
from fedrec.errors import DeployError
from fedrec.runconfig import dump_toml
from fedrec.store.atomic import atomic_write_text

CONNECTION = "fedrec"


@dataclass(frozen=True)
class State:
    """The layout of a server state folder (``--state``)."""

    root: Path
    home: Path | None = None  # --flwr-home: a Flower home other than <state>/flwr (e.g. ~/.flwr), only if asked

    @property
    def tls(self) -> TLSFiles:
        return TLSFiles.under(self.root / "tls")

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def flwr_home(self) -> Path:
        return self.home if self.home is not None else self.root / "flwr"

    @property
    def superlink(self) -> Path:
        return self.root / "superlink"

    def run_dir(self, name: str) -> Path:
        return self.runs / name


def _bin(name: str) -> str:
    """A Flower program next to this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def flower_env(state: State) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(state.flwr_home)
    env.setdefault("COLUMNS", "200")
    return env


def write_connection(state: State, *, address: str) -> Path:
    """``<state>/flwr/config.toml`` with the one ``fedrec`` connection (TLS, our CA).

    In a Flower home of the user's (``--flwr-home``) only the ``[superlink.fedrec]`` table is
    replaced; their other connections and their default stay as they are.
    """
    path = state.flwr_home / "config.toml"
    ca = state.tls.ca_cert.resolve()
    table = f'[superlink.{CONNECTION}]\naddress = "{address}"\nroot-certificates = "{ca}"\n'
    if state.home is None or not path.exists():
        atomic_write_text(path, f'[superlink]\ndefault = "{CONNECTION}"\n\n{table}')
        return path
    kept, skipping = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("["):
            skipping = line.strip() == f"[superlink.{CONNECTION}]"
        if not skipping:
            kept.append(line)
    atomic_write_text(path, "\n".join(kept).rstrip() + "\n\n" + table)
    return path


def superlink_info(state: State) -> dict[str, Any]:
    """What ``server start`` recorded (host, port, pid), or an error saying to start it."""
    try:
        info: dict[str, Any] = json.loads((state.superlink / "superlink.json").read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"{state.superlink}: no SuperLink started here (run 'fedrec server start')") from exc
    return info


def running_superlink(state: State) -> int:
    """The pid of this state folder's running SuperLink, or an error saying to start it."""
    superlink_info(state)
    pid = read_pid(state.superlink / "superlink.pid")
    if pid is None:
        raise DeployError(f"the SuperLink of {state.root} is not running ('fedrec server start')")
    return pid


def start_superlink(state: State, *, host: str, port: int, connect_host: str, timeout: float) -> dict[str, Any]:
    """Check TLS, start ``flower-superlink`` (TLS, persistent database, node auth) and wait for its port."""
    pid_file = state.superlink / "superlink.pid"
    running = read_pid(pid_file)
    if running is not None:
        raise DeployError(f"a SuperLink already runs from {state.root} (pid {running}); 'fedrec server stop' first")
    tls = state.tls
    check_server_tls(tls, host=connect_host)
    cmd = [_bin("flower-superlink"), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key),
           "--ssl-ca-certfile", str(tls.ca_cert), "--database", str(state.superlink / "superlink.db"),
           "--enable-supernode-auth", "--disable-runtime-dependency-installation",
           "--host", host, "--port", str(port)]
    state.superlink.mkdir(parents=True, exist_ok=True)
    write_connection(state, address=f"{connect_host}:{port}")
    proc = start_detached(cmd, log=state.superlink / "superlink.log", env=flower_env(state))
    atomic_write_text(pid_file, f"{proc.pid}\n")
    info = {"pid": proc.pid, "host": host, "port": port, "address": f"{connect_host}:{port}",
            "log": str(proc.log), "database": str(state.superlink / "superlink.db")}
    atomic_write_text(state.superlink / "superlink.json", json.dumps(info))
    try:
        wait_for_port(connect_host, port, timeout=timeout, pid=proc.pid, log=proc.log)
    except DeployError:
        stop_tree(proc.pid)
        raise
    return info


def stop_superlink(state: State) -> int | None:
    """Stop the SuperLink of this state folder and everything it spawned; its pid, or None if none ran."""
    pid = read_pid(state.superlink / "superlink.pid")
    if pid is not None:
        stop_tree(pid)
    return pid


def flwr(state: State, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run one ``flwr ... --format json`` command against the ``fedrec`` connection; its JSON reply."""
    cmd = [_bin("flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=flower_env(state), timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"{' '.join(cmd[:3])}: no answer within {timeout:.0f}s") from exc
    reply = _last_json(done.stdout)
    if reply is None or not reply.get("success", False):
        reason = (reply or {}).get("error-message") or (done.stderr.strip() or done.stdout.strip())[-400:]
        raise DeployError(f"flwr {args[0]}: {' '.join(str(reason).split())}")
    return reply


def _last_json(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def register_keys(state: State, public_keys: list[Path]) -> dict[str, int]:
    """``flwr supernode register`` for each public key, one after the other; key path -> node id.

    Sequential: concurrent registrations all write the SuperLink's SQLite database and, on a
    loaded machine, one of them stalled past three minutes where one at a time takes seconds.
    """
    out: dict[str, int] = {}
    for path in public_keys:
        try:
            reply = flwr(state, "supernode", "register", str(path), CONNECTION)
        except DeployError as exc:
            raise DeployError(f"{path}: {exc}") from exc
        out[str(path)] = int(reply["node-id"])
    return out


def submit(state: State, app: Path, run_config: dict[str, Any], folder: Path) -> int:
    """``flwr run`` the app with ``run_config`` (written as a TOML file); the Flower run id."""
    path = folder / "flwr-run-config.toml"
    atomic_write_text(path, dump_toml(run_config))
    reply = flwr(state, "run", str(app), CONNECTION, "--run-config", str(path))
    return int(reply["run-id"])


def flower_runs(state: State) -> dict[int, dict[str, Any]]:
    """``flwr ls``: Flower run id -> its row (status, elapsed, traffic)."""
    reply = flwr(state, "ls", CONNECTION)
    return {int(r["run-id"]): r for r in reply.get("runs", [])}


def stop_run(state: State, run_id: int) -> None:
    flwr(state, "stop", str(run_id), CONNECTION)


def app_dir(explicit: Path | None) -> Path:
    """The Flower app to submit: ``--app`` or this source checkout (the folder holding ``pyproject.toml``)."""
    if explicit is not None:
        folder = explicit
    else:
        import fedrec

        folder = Path(fedrec.__file__).resolve().parent.parent
    if not (folder / "pyproject.toml").is_file():
        raise DeployError(f"{folder}: no pyproject.toml; pass --app with the fedrec project folder")
    return folder
