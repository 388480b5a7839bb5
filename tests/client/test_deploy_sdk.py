"""SDK devices train for two rounds through real SuperNodes against a local SuperLink."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fedrec.client import Device, Interaction, write_key_file

from fedrec.store.device_store import DeviceStore

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deploy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def test_two_sdk_devices_train_two_rounds_through_supernodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "flwr"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--port", str(port)],
            stdout=open(logs / "superlink.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait_port(port, procs[0])
        stores = []
        for d in range(2):
            key = os.urandom(32)
            dev = Device.open(tmp_path / f"dev{d}.fedrec", key=key)
            dev.record_many([Interaction(i, float(1 + (i + d) % 5), False, i) for i in range(d, 40, 3)])
            key_file = write_key_file(tmp_path / f"dev{d}.key", key)
            procs.append(dev.join(superlink=f"127.0.0.1:{port}", key_file=key_file, insecure=True,
                                  runtime_port=_free_port(), log_file=logs / f"supernode{d}.log"))
            stores.append((dev.store.path, key))
            dev.close()
        run_dir = tmp_path / "run"
        overrides = (f'rounds=2 min-clients=2 cohort=1.0 eval-every=100 round-timeout=120.0 '
                     f'run-dir="{run_dir}" dataset="synthetic" local.steps=2')
        done = subprocess.run(["flwr", "run", str(ROOT), "local", "--run-config", overrides, "--stream"],
                              capture_output=True, text=True, timeout=600, start_new_session=True)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
            if (run_dir / "metrics.jsonl").exists() else []
        assert [r["round"] for r in rows if "round" in r][-1:] == [2], (
            done.stdout[-3000:] + done.stderr[-3000:] + (logs / "supernode0.log").read_text()[-3000:])
        for path, key in stores:
            with DeviceStore.open(path, key=key, create=False) as store:
                state = store.load()
                assert "user.0.factor" in state and np.isfinite(state["user.0.factor"]).all()
                assert len(store.interactions()) > 10  # the app's rows are all still there
    finally:
        for proc in reversed(procs):
            _stop(proc)
