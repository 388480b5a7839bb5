"""``fedrec server`` / ``fedrec device`` refusals that need no Flower process: one line, exit code 2.

Each command is run as the operator runs it (a fresh interpreter), so the test
sees exactly the stderr and exit code a person or script would.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrec.deploy.runspec import CONFIG_KEY, RESUME_KEY, RunRecord, envelope, from_run_config
from fedrec.errors import ConfigError
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig, dump_toml
from fedrec.secagg.crypto.identity import load_authority_key, load_identity
from fedrec.store.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"synthetic.n-users": 5, "synthetic.n-items": 20, "model.dim": 4, "rounds": 3}


def fedrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedrec.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)


def refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _run_folder(state: Path, *, dim: int) -> Path:
    folder = state / "runs" / "r"
    folder.mkdir(parents=True)
    cfg = RunConfig.from_flat({**SMALL, "run-dir": str(folder)})
    (folder / "config.toml").write_text(dump_toml(cfg.flat))
    RunRecord("r", (1,)).save(folder)
    other = RunConfig.from_flat({**SMALL, "model.dim": dim})
    state_ = ServerState.start(20, other.model, other.fed, global_mean=3.0)
    state_.round = 1
    save_checkpoint(folder / "checkpoint.npz", state_, extra={"config": dict(other.flat)})
    return folder


def test_malformed_run_config_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 3\n[model]\ndim = "big"\n')
    refused(fedrec("server", "--state", str(tmp_path), "run", "--config", str(bad)), "model.dim", "expected int")
    bad.write_text("rounds = [3\n")
    refused(fedrec("server", "--state", str(tmp_path), "run", "--config", str(bad)), str(bad), "cannot read config")
    refused(fedrec("server", "--state", str(tmp_path), "run", "--set", "dp.epsilom=3"),
            "dp.epsilom: unknown configuration key", "did you mean dp.epsilon")
    assert not (tmp_path / "runs").exists()


def test_start_without_certificates_is_refused(tmp_path: Path) -> None:
    refused(fedrec("server", "--state", str(tmp_path), "start"), "ca.pem: CA certificate file not found")


def test_start_with_a_name_missing_from_the_certificate_is_refused(tmp_path: Path) -> None:
    assert fedrec("server", "--state", str(tmp_path), "tls", "--host", "127.0.0.1").returncode == 0
    refused(fedrec("server", "--state", str(tmp_path), "start", "--connect-host", "localhost"),
            "server.pem: valid for ['127.0.0.1'], not for 'localhost'")
    assert not (tmp_path / "superlink" / "superlink.pid").exists()


def test_join_with_missing_files_is_refused(tmp_path: Path) -> None:
    refused(fedrec("device", "join", "--superlink", "127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"), "--key",
                   str(tmp_path / "d.key")), "d.key: device authentication key file not found")
    assert fedrec("device", "keygen", "d", "--dir", str(tmp_path)).returncode == 0
    refused(fedrec("device", "join", "--superlink", "127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"), "--key",
                   str(tmp_path / "d.key")), "ca.pem: CA certificate file not found")
    refused(fedrec("device", "join", "--superlink", "nowhere", "--ca", "x", "--key", "y"), "expected HOST:PORT")


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, dim=8)
    before = (folder / "checkpoint.npz").read_bytes()
    refused(fedrec("server", "--state", str(tmp_path), "resume", "r"),
            "checkpoint.npz: table (20, 8) does not match the configuration (20 items, model.dim 4)")
    assert (folder / "checkpoint.npz").read_bytes() == before


def test_resume_refuses_a_corrupted_checkpoint_and_keeps_it(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, dim=4)
    path = folder / "checkpoint.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    refused(fedrec("server", "--state", str(tmp_path), "resume", "r"), "checkpoint.npz: SHA-256 digest mismatch")
    assert path.read_bytes() == bytes(data)
    path.unlink()
    refused(fedrec("server", "--state", str(tmp_path), "resume", "r"), "no checkpoint to resume from")


def test_export_signs_the_checkpoint_round(tmp_path: Path) -> None:
    _run_folder(tmp_path, dim=4)
    assert fedrec("server", "--state", str(tmp_path), "keys", "--no-register").returncode == 0
    out = tmp_path / "m.fedrec"
    done = fedrec("server", "--state", str(tmp_path), "export", "r", "--out", str(out))
    assert done.returncode == 0, done.stderr
    from fedrec.store.artifact import load_public_key, read_model

    model = read_model(out, public_key=load_public_key(tmp_path / "keys" / "signing.pub"))
    assert model.round == 1 and model.run == "r" and model.glob.item_factors.shape == (20, 4)


def test_envelope_round_trip_and_plain_keys() -> None:
    cfg = RunConfig.from_flat({**SMALL, "dp.unit": "user", "dp.epsilon": 4.0, "run-dir": "/tmp/x"})
    back, run_dir, resume = from_run_config({"rounds": 30, **envelope(cfg, resume=True)})
    assert dict(back.flat) == dict(cfg.flat) and run_dir == Path("/tmp/x") and resume
    plain, _, resume = from_run_config({"rounds": 7, CONFIG_KEY: "", RESUME_KEY: False})
    assert plain.fed.rounds == 7 and not resume
    with pytest.raises(ConfigError, match=f"{CONFIG_KEY}: not JSON"):
        from_run_config({CONFIG_KEY: "{oops"})
    assert np.isfinite(back.dp.delta)


def test_ls_and_follow_read_the_run_folder_when_the_superlink_is_down(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, dim=4)
    (folder / "status.json").write_text('{"state": "running", "rounds": 3}')
    (folder / "metrics.jsonl").write_text('{"round": 1, "sampled": 5, "survivors": 4, "dropouts": 1, '
                                          '"epsilon": 2.5, "rmse": 1.1}\n{"round": 2, "sampl')  # torn last line
    import json

    done = fedrec("server", "--state", str(tmp_path), "follow", "r", "--once", "--json")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert (row["round"], row["rounds"], row["survivors"], row["dropouts"], row["epsilon"]) == (1, 3, 4, 1, 2.5)
    assert row["metrics"] == {"rmse": 1.1} and row["flower_status"] == "unreachable" and row["state"] == "stopped"
    listed = json.loads(fedrec("server", "--state", str(tmp_path), "ls", "--json").stdout)["runs"]
    assert [r["name"] for r in listed] == ["r"]
    text = fedrec("server", "--state", str(tmp_path), "follow", "r", "--once")
    assert text.returncode == 0 and "1/3" in text.stdout and "2.5000" in text.stdout
    refused(fedrec("server", "--state", str(tmp_path), "follow", "nope"), "no run.json")


def test_connection_is_isolated_unless_a_flower_home_is_asked_for(tmp_path: Path) -> None:
    import tomllib

    from fedrec.server.flower import State, flower_env, write_connection

    own = write_connection(State(tmp_path / "st"), address="127.0.0.1:8000")
    assert own == tmp_path / "st" / "flwr" / "config.toml"
    assert flower_env(State(tmp_path / "st"))["FLWR_HOME"] == str(tmp_path / "st" / "flwr")
    assert tomllib.loads(own.read_text())["superlink"] == {
        "default": "fedrec", "fedrec": {"address": "127.0.0.1:8000",
                                        "root-certificates": str((tmp_path / "st" / "tls" / "ca.pem").resolve())}}
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "x:1"\n'
                                      'insecure = true\n\n[superlink.fedrec]\naddress = "old:1"\n')
    write_connection(State(tmp_path / "st", home), address="10.0.0.1:8000")
    links = tomllib.loads((home / "config.toml").read_text())["superlink"]
    assert links["default"] == "mine" and links["mine"] == {"address": "x:1", "insecure": True}
    assert links["fedrec"]["address"] == "10.0.0.1:8000"


def test_keys_without_a_superlink_are_refused_before_any_key_is_made(tmp_path: Path) -> None:
    refused(fedrec("server", "--state", str(tmp_path), "keys", "--count", "2"), "no SuperLink started here")
    assert not (tmp_path / "devices").exists() and not (tmp_path / "keys").exists()
    assert not (tmp_path / "authority").exists()
    done = fedrec("server", "--state", str(tmp_path), "keys", "--count", "2", "--no-register", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "devices").iterdir()) == [
        "device-0.identity", "device-0.key", "device-0.pub", "device-1.identity", "device-1.key", "device-1.pub"]
    refused(fedrec("server", "--state", str(tmp_path), "keys", "--count", "2", "--no-register"),
            "device-0.key: already exists")


def test_keys_write_identity_folders_certified_by_one_authority_kept_apart(tmp_path: Path) -> None:
    done = fedrec("server", "--state", str(tmp_path), "keys", "--count", "2", "--no-register", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    authority = tmp_path / "authority"
    anchor = load_authority_key(authority / "authority.pub")
    assert out["authority_public_key"] == str(authority / "authority.pub")
    assert stat.S_IMODE((authority / "authority.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(authority.stat().st_mode) == 0o700
    assert not list((tmp_path / "keys").glob("authority*")) and not list((tmp_path / "tls").glob("authority*"))
    subjects = set()
    for name in ("device-0", "device-1"):
        folder = tmp_path / "devices" / f"{name}.identity"
        assert out["devices"][name]["identity"] == str(folder)
        assert (folder / "authority.pub").read_bytes() == anchor
        assert stat.S_IMODE((folder / "identity.pem").stat().st_mode) == 0o600
        identity, folder_anchor = load_identity(folder / "identity.pem", folder / "identity.cert",
                                                folder / "authority.pub")
        assert folder_anchor == anchor
        identity.certificate.verify(anchor)  # raises unless the authority issued it
        subjects.add(identity.certificate.subject)
    assert len(subjects) == 2  # peers refuse two nodes presenting one enrolment id
    again = fedrec("server", "--state", str(tmp_path), "keys", "--device", "late", "--no-register", "--json")
    assert again.returncode == 0, again.stderr
    assert load_authority_key(authority / "authority.pub") == anchor  # made once, never replaced
    late = tmp_path / "devices" / "late.identity"
    load_identity(late / "identity.pem", late / "identity.cert", late / "authority.pub")[0].certificate.verify(anchor)


def test_join_with_a_bad_identity_folder_is_refused(tmp_path: Path) -> None:
    assert fedrec("device", "keygen", "d", "--dir", str(tmp_path)).returncode == 0
    join = ("device", "join", "--superlink", "127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"), "--key",
            str(tmp_path / "d.key"), "--identity")
    refused(fedrec(*join, str(tmp_path / "none")), "none: identity folder not found")
    for state in ("a", "b"):
        assert fedrec("server", "--state", str(tmp_path / state), "keys", "--device", "d",
                      "--no-register").returncode == 0
    mixed = tmp_path / "b" / "devices" / "d.identity"
    (mixed / "authority.pub").write_bytes((tmp_path / "a" / "authority" / "authority.pub").read_bytes())
    refused(fedrec(*join, str(mixed)), "identity.cert", "signature does not verify")


def test_a_secure_run_takes_the_state_folders_authority_key_for_the_server(tmp_path: Path) -> None:
    """``fedrec server run`` points ``secagg.authority-key`` at ``<state>/authority/authority.pub``; the
    deployed ServerApp reads it, so the server verifies advertisements as devices do."""
    import argparse

    from fedrec.server.app import authority_key_for
    from fedrec.server.cli import resolve_config

    from fedrec.deploy.keys import make_authority

    _, public = make_authority(tmp_path / "authority")
    args = argparse.Namespace(config=None, overrides=["secagg.enabled=true", *(f"{k}={v}" for k, v in SMALL.items())])
    cfg = resolve_config(args, tmp_path / "runs" / "r", authority=public)
    assert cfg.secagg.authority_key == str(public.resolve())
    assert authority_key_for(cfg) == load_authority_key(public)
    from_envelope, _, _ = from_run_config(envelope(cfg, resume=False))
    assert from_envelope.secagg.authority_key == str(public.resolve())
    plain = resolve_config(argparse.Namespace(config=None, overrides=[]), tmp_path / "runs" / "p", authority=public)
    assert plain.secagg.authority_key == "" and authority_key_for(plain) is None
    other = tmp_path / "other.pub"
    other.write_bytes(bytes(32))  # given explicitly, it wins over the state folder's (and is read here)
    chosen = resolve_config(argparse.Namespace(config=None, overrides=["secagg.enabled=true",
                                                                       f"secagg.authority-key={public}"]),
                            tmp_path / "runs" / "q", authority=other)
    assert chosen.secagg.authority_key == str(public)


def test_a_bad_authority_key_file_is_refused_before_the_run_is_submitted(tmp_path: Path) -> None:
    short = tmp_path / "short.pub"
    short.write_bytes(b"\x01" * 31)
    for path, why in ((tmp_path / "none.pub", "cannot read"), (short, "must be 32 raw bytes")):
        refused(fedrec("server", "--state", str(tmp_path), "run", "--set", "secagg.enabled=true", "--set",
                       f"secagg.authority-key={path}"), str(path), why)
    assert not (tmp_path / "runs").exists()
