"""The ``fedrec`` dispatcher: bad input is one line on stderr naming the file or key, exit code 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrec.cli import main
from fedrec.data.spec import load_run_dataset
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig
from fedrec.store.checkpoint import MAGIC, checkpoint_bytes, previous_path, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "synthetic.n-users=6", "--set", "synthetic.n-items=20", "--set", "model.dim=4", "--rounds", "2"]


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fedrec {argv[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _run_dir(tmp_path: Path, *, dim: int = 4, round_: int = 1) -> Path:
    cfg = RunConfig.from_flat({"synthetic.n-users": 6, "synthetic.n-items": 20, "model.dim": dim})
    state = ServerState.start(load_run_dataset(cfg.data).n_items, cfg.model, cfg.fed, global_mean=3.0)
    state.round = round_
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint.npz", state)
    return run


def _resume(run: Path) -> list[str]:
    return ["simulate", *SMALL, "--resume", "--run-dir", str(run), "--json"]


def test_truncated_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    ckpt = run / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    _fails(capsys, _resume(run), str(ckpt), "digest mismatch")


def test_flipped_byte_in_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    ckpt = run / "checkpoint.npz"
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    ckpt.write_bytes(bytes(blob))
    _fails(capsys, _resume(run), str(ckpt), "SHA-256 digest mismatch")


def test_wrong_format_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    ckpt = run / "checkpoint.npz"
    buf = io.BytesIO()
    np.savez(buf, item_factors=np.zeros((20, 4)))
    ckpt.write_bytes(buf.getvalue())
    _fails(capsys, _resume(run), str(ckpt), "'fedrec-checkpoint/1'", "not supported")
    ckpt.write_bytes(b"fedrec-checkpoint/7\n" + bytes(100))
    _fails(capsys, _resume(run), str(ckpt), "format 'fedrec-checkpoint/7', expected 'fedrec-checkpoint/2'")
    ckpt.write_bytes(b"hello")
    _fails(capsys, _resume(run), str(ckpt), "not a fedrec checkpoint")


def test_negative_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    ckpt = run / "checkpoint.npz"
    blob = ckpt.read_bytes()
    payload = blob[len(MAGIC) + 32:]
    with np.load(io.BytesIO(payload)) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["header"].tobytes())
    state = ServerState.start(20, RunConfig.from_flat({"model.dim": 4}).model,
                              RunConfig.from_flat({}).fed, global_mean=header["global_mean"])
    state.round = -5
    ckpt.write_bytes(checkpoint_bytes(state))  # a well-sealed file holding a bad value
    _fails(capsys, _resume(run), str(ckpt), "round must be >= 0, got -5")


def test_another_models_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path, dim=3)
    _fails(capsys, _resume(run), str(run / "checkpoint.npz"), "does not match the run configuration",
           "model.dim 4")


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, _resume(tmp_path / "nowhere"), str(tmp_path / "nowhere" / "checkpoint.npz"), "cannot read")


def test_a_bad_resume_leaves_both_checkpoints_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path, round_=1)
    cfg = RunConfig.from_flat({"synthetic.n-users": 6, "synthetic.n-items": 20, "model.dim": 4})
    state = ServerState.start(20, cfg.model, cfg.fed, global_mean=3.0)
    state.round = 2
    save_checkpoint(run / "checkpoint.npz", state)
    ckpt = run / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:-1])
    before = (ckpt.read_bytes(), previous_path(ckpt).read_bytes())
    _fails(capsys, _resume(run), str(ckpt))
    assert (ckpt.read_bytes(), previous_path(ckpt).read_bytes()) == before


@pytest.mark.parametrize(("setting", "needles"), [
    ("local.lr=nan", ("local.lr", "nan")),
    ("model.reg=inf", ("model.reg", "finite")),
    ("strategy.server-lr=-inf", ("strategy.server-lr",)),
    ("dp.clip=nan", ("dp.clip",)),
    ("synthetic.noise=nan", ("synthetic.noise",)),
    ("round-timeout=inf", ("round-timeout",)),
    ("secagg.threshold=2.5", ("secagg.threshold", "2.5")),
    ("strategy.beta2=1.5", ("strategy.beta2",)),
    ("model.dimension=4", ("model.dimension", "unknown", "model.dim")),
])
def test_config_errors_name_the_key(setting: str, needles: tuple[str, ...],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["simulate", *SMALL, "--set", setting, "--json"], *needles)


def test_secagg_threshold_the_cohort_cannot_meet_is_named_before_flower_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["simulate", *SMALL, "--set", "secagg.enabled=true", "--set", "secagg.threshold=2.0", "--json"],
           "secagg.threshold", "cohort of 6")


def test_train_central_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["train-central", "--dataset", "ml-100k", "--data-dir", "/nonexistent/fedrec"], "/nonexistent")


def test_no_traceback_from_a_real_process(tmp_path: Path) -> None:
    """The installed entry point's behaviour, as a user sees it: exit 2, one line, no traceback."""
    run = _run_dir(tmp_path)
    (run / "checkpoint.npz").write_bytes(b"fedrec-checkpoint/2\n" + bytes(10))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "fedrec.cli", *_resume(run)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(run / "checkpoint.npz") in proc.stderr and "truncated" in proc.stderr


def test_split_value_and_table_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "run.toml"
    conf.write_text('split = "random-one"\n[split]\nseed = 3\n')
    _fails(capsys, ["train-central", "--config", str(conf)], f"{conf}: line 2, column", '"split.seed" = 1')
