"""Start, find and stop the Flower processes a deployment runs (SuperLink, SuperNodes).

Why here and not in Flower: ``flower-superlink`` and ``flower-supernode`` are
long-lived programs, and each spawns helpers in sessions of their own
(``flower-superexec``, then ``flwr-serverapp`` / ``flwr-clientapp`` per run or
message). Killing one process group is therefore not enough to stop
everything: :func:`stop_tree` walks the live process tree (``/proc``, Linux)
and signals every process group found under the root, then waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedrec.errors import DeployError


@dataclass(frozen=True)
class Started:
    """A detached process: its pid (also its process group) and log file."""

    pid: int
    log: Path


def start_detached(cmd: list[str], *, log: Path, env: Mapping[str, str] | None = None,
                   cwd: Path | None = None) -> Started:
    """Start ``cmd`` in a new session (its own process group), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
        except OSError as exc:
            raise DeployError(f"cannot start {cmd[0]}: {exc.strerror}") from exc
    return Started(proc.pid, log)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def stop_tree(pid: int, *, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal every process group under ``pid`` (``sig``, then SIGKILL after ``timeout``) and reap."""
    procs = [p for p in descendants(pid) if alive(p)]
    groups = {_pgid(p) for p in procs} - {None, os.getpgrp()}
    for group in groups:
        _killpg(group, sig)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.1)
    for group in groups:
        _killpg(group, signal.SIGKILL)
    for p in procs:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _reap()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _killpg(group: int | None, sig: int) -> None:
    if group is None:
        return
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap() -> None:
    """Collect exited children of this process (detached ones we started), so they are not zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_for_port(host: str, port: int, *, timeout: float, pid: int | None = None, log: Path | None = None) -> None:
    """Return once ``host:port`` accepts a TCP connection; fail early if ``pid`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise DeployError(f"process {pid} exited before {host}:{port} answered{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise DeployError(f"{host}:{port} did not answer within {timeout:.0f}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 5) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return " (see " + str(log) + "): " + " | ".join(t.strip() for t in text) if text else ""


def read_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process still runs, else ``None``."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None
