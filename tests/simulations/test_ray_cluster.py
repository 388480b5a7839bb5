"""A simulation that outgrows one machine: Flower's Simulation Engine on a two-node Ray cluster.

The test starts a real Ray cluster on 127.0.0.1 (``ray start --head`` and a
second node with ``ray start --address``, one CPU each, so each node hosts one
of Flower's ClientApp actors), runs a small fedrec simulation against it
(``init_args.address``) and checks that devices were served on both nodes and
that every round aggregated the whole cohort. Both nodes are stopped in a
``finally`` by killing their process groups (never ``ray stop``, which would
stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVER = r"""
import json, os, sys
from pathlib import Path
from flwr.clientapp import ClientApp
from fedrec.client.app import make_client_app
from fedrec.runconfig import RunConfig
from fedrec.simulations.runner import simulate

LOG = Path(sys.argv[2])
cfg = RunConfig.from_flat({"synthetic.n-users": 30, "synthetic.n-items": 40, "synthetic.mean-interactions": 10,
                           "rounds": 2, "eval-every": 2, "model.dim": 4})
REAL = make_client_app(run_config=cfg)


class NodeTaggingApp(ClientApp):
    # Defined in __main__, so Ray ships it by value; it records which cluster node served each message.
    def __call__(self, message, context):
        with open(LOG / f"{os.environ['FEDREC_RAY_NODE']}-{os.getpid()}", "a") as f:
            f.write(f"{message.metadata.message_type}\n")
        return REAL(message, context)


import time
import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while sum(node["Alive"] for node in ray.nodes()) < 2:  # Flower sizes its actor pool from the cluster it sees
    if time.monotonic() > deadline:
        raise SystemExit("the second Ray node did not join within 60 s")
    time.sleep(0.5)
ray.shutdown()

result = simulate(cfg, Path(sys.argv[3]), ray_address=sys.argv[1], client_app=NodeTaggingApp())
print(json.dumps({"history": result.history}))
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_node(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    return subprocess.Popen([ray, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--disable-usage-stats", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _node_ports() -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    ports = _free_ports(len(names))
    return [f"{n}={p}" for n, p in zip(names, ports, strict=True)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port, client_port = _free_ports(2)
    base = {**os.environ, "PYTHONPATH": str(ROOT), "FEDREC_CACHE_DIR": str(tmp_path / "cache"),
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    temp = Path("/tmp") / f"fedrec-ray-{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(_ray_node(["--head", f"--port={port}", f"--ray-client-server-port={client_port}",
                                "--include-dashboard=false", f"--temp-dir={temp}", *_node_ports()],
                               {**base, "FEDREC_RAY_NODE": "head"}))
        address = f"127.0.0.1:{port}"
        _wait_for_port(port, nodes[0])
        nodes.append(_ray_node([f"--address={address}", *_node_ports()], {**base, "FEDREC_RAY_NODE": "second"}))
        yield address, base
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"the Ray head did not listen on {port} within {timeout:.0f}s")


@pytest.mark.deploy
def test_simulation_runs_across_a_two_node_ray_cluster(cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = cluster
    log = tmp_path / "served"
    log.mkdir()
    out = subprocess.run([sys.executable, "-c", DRIVER, address, str(log), str(tmp_path / "run")], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads(out.stdout.strip().splitlines()[-1])["history"]
    assert [row["survivors"] for row in history] == [30, 30]
    served = {p.name.split("-")[0] for p in log.iterdir()}
    assert served == {"head", "second"}, f"messages were served on {served} only"
