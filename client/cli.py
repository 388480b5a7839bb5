"""``fedrec device join``: one device takes part in training as a Flower SuperNode.

Checks first, then hands over to ``flower-supernode``: the CA certificate and
the authentication key are read and validated, and the SuperLink's certificate
is verified against that CA (chain, dates, name) with a plain TLS handshake,
so an untrusted or expired server is one clear error rather than endless
reconnection attempts. Then ``flower-supernode`` runs in the foreground with
TLS (``--root-certificates``), node authentication
(``--auth-supernode-private-key``) and this device's node config; if the
SuperLink refuses the key (not registered) the command says so and exits 2.

Where the device's data comes from: ``--store FILE --store-key-file KEY``
points the ClientApp at the SDK's encrypted on-device store (the node-config
keys the SDK's ``Device.supernode_command`` uses); ``--partition-id N``
selects a partition of the run's dataset instead (simulation data, for trying
a deployment on one machine); ``--node-config`` passes anything else through.

Secure aggregation: ``--identity DIR`` names the device's identity folder
(``identity.pem``, ``identity.cert``, ``authority.pub``; ``fedrec server keys``
makes ``devices/NAME.identity``). It is checked here (certificate under the
folder's authority, key matching it) and passed as node config
``secagg-identity``; a device joined without one takes part in plain rounds
only and refuses every secure round.

``fedrec device keygen NAME`` makes the device's own key pair, whose public
half the operator registers (``fedrec server keys --register FILE``), so the
private key never leaves the device.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

from fedrec import wire
from fedrec.deploy.keys import check_device_key, check_identity, make_device_key
from fedrec.deploy.procs import stop_tree
from fedrec.deploy.tls import probe_tls
from fedrec.errors import DeployError, FedRecError

REFUSED = ("Failed to activate SuperNode", "Exit Code: 305")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise DeployError(f"--superlink {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line for this device."""
    node_config = list(args.node_config)
    if args.partition_id is not None:
        node_config.append(f"partition-id={args.partition_id}")
    if args.store is not None:  # the SDK's on-device store (client/sdk.py Device.supernode_command: same keys)
        if args.store_key_file is None:
            raise DeployError("--store needs --store-key-file (the file holding the store's key)")
        node_config += [f'store="{args.store.resolve()}"', f'key-file="{args.store_key_file.resolve()}"']
    if args.identity is not None:
        if any(entry.strip().startswith(f"{wire.NODE_IDENTITY}=") for entry in args.node_config):
            raise DeployError(f"--identity and --node-config {wire.NODE_IDENTITY}=...: give the identity once")
        node_config.append(f'{wire.NODE_IDENTITY}="{args.identity.resolve()}"')
    if args.eval_min_cohort is not None:
        if args.eval_min_cohort < 2:
            raise DeployError(f"--eval-min-cohort: must be >= 2, got {args.eval_min_cohort}")
        if any(entry.strip().startswith(f"{wire.NODE_EVAL_MIN_COHORT}=") for entry in args.node_config):
            raise DeployError(f"--eval-min-cohort and --node-config {wire.NODE_EVAL_MIN_COHORT}=...: give it once")
        node_config.append(f"{wire.NODE_EVAL_MIN_COHORT}={args.eval_min_cohort}")
    exe = Path(sys.executable).parent / "flower-supernode"
    cmd = [str(exe) if exe.exists() else "flower-supernode", "--superlink", args.superlink,
           "--root-certificates", str(args.ca), "--auth-supernode-private-key", str(args.key),
           "--port", str(args.clientapp_port or _free_port())]
    if node_config:
        cmd += ["--node-config", " ".join(node_config)]
    if args.max_retries is not None:
        cmd += ["--max-retries", str(args.max_retries)]
    return cmd


def cmd_join(args: argparse.Namespace) -> int:
    host, port = _address(args.superlink)
    check_device_key(args.key)
    if args.identity is not None:
        check_identity(args.identity)
    probe_tls(host, port, ca_file=args.ca, timeout=args.connect_timeout)
    env = dict(os.environ)
    home = args.home or Path(args.key).resolve().parent / f"{Path(args.key).stem}.flwr"
    env["FLWR_HOME"] = str(home)  # where the SuperNode unpacks app bundles; never ~/.flwr
    proc = subprocess.Popen(supernode_command(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, bufsize=1, start_new_session=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        stop_tree(proc.pid, timeout=5.0)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    refused = False
    tail: collections.deque[str] = collections.deque(maxlen=3)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line.strip())
            refused = any(marker in line for marker in REFUSED)
            if refused:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop_tree(proc.pid, timeout=5.0)
        proc.wait()
    if refused:
        raise DeployError(f"the SuperLink at {args.superlink} refused this device: its key {args.key} is not "
                          "registered ('fedrec server keys --register <public key>' on the server)")
    if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise DeployError(f"flower-supernode exited with code {proc.returncode}: {' | '.join(tail)}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    key = make_device_key(args.dir, args.name, force=args.force)
    print(f"private key {key.private} (keep on this device); register {key.public} on the server")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join", help="start a SuperNode for this device")
    join.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink (a name in its certificate)")
    join.add_argument("--ca", type=Path, required=True, help="the server's CA certificate (ca.pem)")
    join.add_argument("--key", type=Path, required=True, help="this device's authentication key (OpenSSH, EC)")
    join.add_argument("--partition-id", type=int, help="use partition N of the run's dataset as this device's data")
    join.add_argument("--store", type=Path, help="the device's encrypted store (SDK) holding its interactions")
    join.add_argument("--store-key-file", type=Path, help="file holding the store's key (readable by the app only)")
    join.add_argument("--identity", type=Path, metavar="DIR",
                      help="this device's secure-aggregation identity folder (devices/NAME.identity)")
    join.add_argument("--eval-min-cohort", type=int, metavar="N",
                      help="refuse secure evaluations of fewer than N devices (default 5, at least 2)")
    join.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE",
                      help="extra node configuration (repeatable)")
    join.add_argument("--home", type=Path, help="SuperNode working folder (default next to the key)")
    join.add_argument("--clientapp-port", type=int, help="local port for the ClientApp API (default: a free one)")
    join.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the SuperLink")
    join.add_argument("--max-retries", type=int, help="give up after this many reconnection attempts")
    keygen = sub.add_parser("keygen", help="make this device's authentication key pair")
    keygen.add_argument("name", help="device name")
    keygen.add_argument("--dir", type=Path, default=Path("."), help="folder for NAME.key and NAME.pub")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return cmd_join(args) if args.command == "join" else cmd_keygen(args)
    except FedRecError as exc:
        print(f"fedrec device {args.command}: error: {exc}", file=sys.stderr)
        return 2
