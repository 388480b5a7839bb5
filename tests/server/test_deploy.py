"""A real deployment on 127.0.0.1: SuperLink and five SuperNodes with TLS and node authentication.

Everything goes through the operator's and the device's commands (``fedrec
server ...``, ``fedrec device join``) and Flower's own programs; nothing is
simulated. Each device joins with the identity folder ``server keys`` enrolled
(``--identity``), so its secure-aggregation certificate verifies under the
state's one enrolment authority. The end-to-end test runs three rounds of secure aggregation under
user-level DP, stops one device during round 2 (the round completes on the
four survivors), kills the whole server side (SuperLink, SuperExec, ServerApp)
with SIGKILL during round 3, restarts it on the same database and resumes
the run from its checkpoint: the run ends at round 3 with the epsilon of an
uninterrupted three-round run. Every process started is stopped in
``finally`` (process trees, see :mod:`fedrec.deploy.procs`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedrec.deploy.procs import alive, start_detached, stop_tree
from fedrec.deploy.runspec import read_metrics, read_status
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.runconfig import RunConfig, load_toml
from fedrec.store.artifact import load_public_key, read_model
from fedrec.store.checkpoint import load_checkpoint

pytestmark = pytest.mark.deploy
ROOT = Path(__file__).resolve().parents[2]
DEVICES = 5
RUN = ["--set", "synthetic.n-users=5", "--set", "synthetic.n-items=20", "--set", "synthetic.mean-interactions=10",
       "--set", "model.dim=4", "--set", "rounds=3", "--set", "eval-every=3", "--set", "local.steps=1",
       "--set", "secagg.enabled=true", "--set", "min-clients=4", "--set", "round-timeout=240",
       "--set", "secagg.timeout=240", "--set", "dp.unit=user", "--set", "dp.noise-multiplier=1.0",
       "--set", "dp.cohort-rate=1.0", "--set", "dp.delta=0.01", "--set", "dp.clip=0.5",
       # four survivors evaluate in round 3: a secure evaluation cohort of 4 needs a minimum below 4
       "--set", "secagg.eval-min-cohort=3"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def fedrec(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedrec.cli", *args], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=timeout, check=False)


def ok(*args: str) -> dict[str, Any]:
    done = fedrec(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, *, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Deployment:
    """One state folder, its SuperLink and the devices joined to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.port = _free_port()
        self.joins: dict[int, int] = {}

    def server(self, *args: str) -> list[str]:
        return ["server", "--state", str(self.state), *args]

    def superlink_pid(self) -> int:
        return int((self.state / "superlink" / "superlink.pid").read_text())

    def join(self, i: int, *, key: Path | None = None, ca: Path | None = None) -> int:
        cmd = [sys.executable, "-m", "fedrec.cli", "device", "join", "--superlink", f"127.0.0.1:{self.port}",
               "--ca", str(ca or self.state / "tls" / "ca.pem"),
               "--key", str(key or self.state / "devices" / f"device-{i}.key"), "--partition-id", str(i),
               "--eval-min-cohort", "3"]  # each device's own floor: RUN's secagg.eval-min-cohort cannot lower it
        identity = self.state / "devices" / f"device-{i}.identity"
        if key is None and identity.exists():  # enrolled by 'server keys': secure aggregation needs it
            cmd += ["--identity", str(identity)]
        proc = start_detached(cmd, log=self.root / f"join-{i}.log", env=_env(), cwd=ROOT)
        self.joins[i] = proc.pid
        return proc.pid

    def online(self) -> int:
        done = subprocess.run([str(Path(sys.executable).parent / "flwr"), "supernode", "ls", "fedrec", "--format",
                               "json"], capture_output=True, text=True, timeout=60, check=False,
                              env={**_env(), "FLWR_HOME": str(self.state / "flwr")})
        try:
            nodes = json.loads(done.stdout[done.stdout.find("{"):])["nodes"]
        except (ValueError, KeyError):
            return 0
        return sum(n["status"] == "online" for n in nodes)

    def stop_all(self) -> None:
        for pid in self.joins.values():
            stop_tree(pid, timeout=5.0)
        pid_file = self.state / "superlink" / "superlink.pid"
        if pid_file.exists():
            stop_tree(int(pid_file.read_text()), timeout=5.0)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = Deployment(tmp_path_factory.mktemp("deploy"))
    try:
        ok(*dep.server("tls", "--host", "127.0.0.1", "--host", "localhost", "--days", "2"))
        ok(*dep.server("start", "--port", str(dep.port)))
        made = ok(*dep.server("keys", "--count", str(DEVICES)))
        assert all(Path(d["identity"]).is_dir() for d in made["devices"].values())
        yield dep
    finally:
        dep.stop_all()


def test_unregistered_device_is_refused(deployment: Deployment) -> None:
    done = fedrec("device", "keygen", "stranger", "--dir", str(deployment.root))
    assert done.returncode == 0, done.stderr
    pid = deployment.join(99, key=deployment.root / "stranger.key")
    log_file = deployment.root / "join-99.log"
    try:
        wait_until(lambda: not alive(pid) or "not registered" in log_file.read_text(), timeout=90,
                   what="the SuperLink to refuse the unregistered key")
        log = log_file.read_text()
        assert "fedrec device join: error: the SuperLink" in log and "is not registered" in log
    finally:
        stop_tree(pid)
        deployment.joins.pop(99)


def test_device_that_does_not_trust_the_server_ca_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    other = fedrec("server", "--state", str(tmp_path / "other"), "tls")
    assert other.returncode == 0, other.stderr
    done = fedrec("device", "join", "--superlink", f"127.0.0.1:{deployment.port}", "--ca",
                  str(tmp_path / "other" / "tls" / "ca.pem"), "--key",
                  str(deployment.state / "devices" / "device-0.key"), "--partition-id", "0", timeout=60)
    assert done.returncode == 2
    assert "server certificate refused with CA" in done.stderr and "Traceback" not in done.stderr


def test_deployed_run_survives_a_device_and_a_server_crash(deployment: Deployment) -> None:
    dep = deployment
    started = time.monotonic()
    for i in range(DEVICES):
        dep.join(i)
    wait_until(lambda: dep.online() >= DEVICES, timeout=120, what="five SuperNodes online")
    ok(*dep.server("run", "--name", "e2e", *RUN))
    folder = dep.state / "runs" / "e2e"
    # the ServerApp verifies the devices' advertisements under the state folder's authority too
    submitted = RunConfig.from_flat(load_toml(folder / "config.toml")).secagg
    assert submitted.authority_key == str((dep.state / "authority" / "authority.pub").resolve())
    wait_until(lambda: len(read_metrics(folder)) >= 1, timeout=400, what="round 1", every=0.5)
    round_one = time.monotonic()
    stop_tree(dep.joins[DEVICES - 1], timeout=10.0)  # one device leaves during round 2
    wait_until(lambda: len(read_metrics(folder)) >= 2, timeout=400, what="round 2", every=0.5)
    time.sleep(2.0)  # round 3 under way
    stop_tree(dep.superlink_pid(), sig=signal.SIGKILL)  # the server side crashes: SuperLink, SuperExec, ServerApp
    assert len(read_metrics(folder)) == 2 and read_status(folder)["state"] == "running"

    ok(*dep.server("start", "--port", str(dep.port)))
    wait_until(lambda: dep.online() >= DEVICES - 1, timeout=120, what="four SuperNodes back online")
    resumed = ok(*dep.server("resume", "e2e"))
    assert resumed["from_round"] == 2
    final = ok(*dep.server("follow", "e2e", "--timeout", "400"))
    assert final["state"] == "finished", final

    rows = read_metrics(folder)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["survivors"] == DEVICES and rows[0]["dropouts"] == 0
    assert rows[1]["sampled"] == DEVICES and rows[1]["survivors"] == DEVICES - 1 and rows[1]["dropouts"] == 1
    assert rows[2]["survivors"] == DEVICES - 1 and "rmse" in rows[2]
    reference = PrivacyAccountant("rdp", delta=0.01, unit="user")
    for _ in range(3):
        reference.step(noise_multiplier=1.0, sample_rate=1.0)
    assert rows[2]["epsilon"] == pytest.approx(reference.epsilon(), rel=1e-12)
    assert rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"]
    state, _ = load_checkpoint(folder / "checkpoint.npz")
    assert state.round == 3
    listed = ok(*dep.server("ls"))["runs"]
    assert [(r["name"], r["state"], len(r["flower_runs"])) for r in listed] == [("e2e", "finished", 2)]

    exported = ok(*dep.server("export", "e2e"))
    model = read_model(Path(exported["artifact"]), public_key=load_public_key(dep.state / "keys" / "signing.pub"))
    assert model.round == 3 and model.glob.item_factors.shape == (20, 4)
    timing = {"first_round_s": rows[0]["seconds"], "round_2_s": rows[1]["seconds"], "round_3_s": rows[2]["seconds"],
              "until_round_1_s": round_one - started, "total_s": time.monotonic() - started}
    (dep.root / "timing.json").write_text(json.dumps(timing))
    print("deployed round timing:", json.dumps(timing))
