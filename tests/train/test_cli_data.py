"""Your own data through ``fedrec train-central``: the nine frictions of issue 15, each now works or
fails with a one-line error (exit code 2) naming the file, line, column or key and what to pass."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrec.cli import main
from fedrec.data.interactions import Interactions
from fedrec.data.options import CsvOptions
from fedrec.data.spec import _DATASET_CACHE, load_run_dataset
from fedrec.data.splits import leave_last_out
from fedrec.data.userfile import read_user_file
from fedrec.runconfig import RunConfig
from fedrec.train import cli as train_cli
from simulations.make_playcounts import playcount_log

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "2", "--json"]


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A headerless TSV of user, item, play count without timestamps (the issue's shape), small."""
    path = tmp_path_factory.mktemp("plays") / "plays.tsv"
    path.write_text(playcount_log(n_users=80, n_items=1500, mean_interactions=12, seed=3, header=None))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    code = main(["train-central", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = _run(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("fedrec train-central: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def _dataset(argv: list[str]) -> object:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    _DATASET_CACHE.clear()  # read the file afresh, with its warnings
    return load_run_dataset(train_cli.resolve_config(parser.parse_args(argv)).data)


def test_friction_1_headerless_dat_keeps_its_first_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [f"{u}::{i}::{1 + (u * i) % 5}::{978300000 + 60 * i}" for u in range(1, 13) for i in range(1, 9)]
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(rows) + "\n")
    code, out, _ = _run(["--dataset", "csv", "--data-dir", str(path), *FAST], capsys)
    assert code == 0 and 0 < float(out["rmse"]) < 5  # type: ignore[arg-type]
    data = _dataset(["--dataset", "csv", "--data-dir", str(path)])
    assert len(data.train) + len(data.test) == len(rows)  # type: ignore[attr-defined]


def test_friction_2_data_dir_may_be_a_folder(plays: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "plays.tsv").write_text(plays.read_text())
    code, out, err = _run(["--dataset", "csv", "--data-dir", str(folder), "--protocol", "R1", "--split", "random-one",
                           "--set", "model.recency-boost=0", *FAST], capsys)
    assert code == 0 and "hr@10" in out
    (folder / "other.csv").write_text("a,b\n")
    message = _error(["--dataset", "csv", "--data-dir", str(folder), "--protocol", "R1"], capsys)
    assert "2 data files (other.csv, plays.tsv); pass one of them as data-dir" in message


def test_friction_3_other_column_names_are_mapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.csv"
    path.write_text("member,thing,weight\n" + "".join(f"m{u},t{(u * 7 + k) % 30},{k + 1}\n"
                                                     for u in range(40) for k in range(6)))
    message = _error(["--dataset", "csv", "--data-dir", str(path), "--protocol", "R1"], capsys)
    assert "no item column found among: member, thing, weight; pass --set csv.item-col=" in message
    argv = ["--dataset", "csv", "--data-dir", str(path), "--protocol", "R1", "--set", "csv.item-col=thing",
            "--user-col", "member", "--set", "csv.weight-col=weight", "--split", "random-one",
            "--set", "model.recency-boost=0"]
    code, out, _ = _run([*argv, *FAST], capsys)
    assert code == 0 and out["split"] == "random-one"
    data = _dataset(argv)
    assert data.train.user_ids.ids[0] == "m0" and float(data.train.weights.max()) > 1  # type: ignore[attr-defined]


def test_friction_4_e1_on_csv_is_reachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,grade\n" + "".join(f"{u},{i},{1 + (u + i) % 5}\n" for u in range(20) for i in range(10)))
    message = _error(["--dataset", "csv", "--data-dir", str(path)], capsys)
    assert "protocol E1 predicts ratings" in message and "pass --set csv.rating-col=" in message
    assert "2 'grade'" in message
    code, out, _ = _run(["--dataset", "csv", "--data-dir", str(path), "--rating-col", "grade", *FAST], capsys)
    assert code == 0 and "rmse" in out


def test_friction_5_timestamps_decide_the_held_out_item(tmp_path: Path) -> None:
    # The six rows: user a's latest interaction is the item seen first in the file.
    path = tmp_path / "six.csv"
    path.write_text("user,item,rating,timestamp\na,x,5,300\na,y,3,100\na,z,4,200\nb,y,2,10\nb,z,5,20\nb,x,1,5\n")
    data = _dataset(["--dataset", "csv", "--data-dir", str(path), "--protocol", "R1"])
    test = data.test  # type: ignore[attr-defined]
    held = {test.user_ids.external(u): test.item_ids.external(i) for u, i in zip(test.users, test.items, strict=True)}
    assert held == {"a": "x", "b": "z"}
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(path.read_text().replace("timestamp", "when"))
    again = _dataset(["--dataset", "csv", "--data-dir", str(renamed), "--protocol", "R1",
                      "--set", "csv.timestamp-col=when"])
    assert again.test.items.tolist() == test.items.tolist()  # type: ignore[attr-defined]


def test_friction_6_r1_without_timestamps_is_refused_and_random_one_holds_out_seen_items(
    plays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _error(["--dataset", "csv", "--data-dir", str(plays), "--protocol", "R1"], capsys)
    assert "has no timestamps" in message and "pass --set split=random-one" in message
    data = _dataset(["--dataset", "csv", "--data-dir", str(plays), "--protocol", "R1", "--split", "random-one"])
    random_seen = _share_seen_in_train(data.train, data.test)  # type: ignore[attr-defined]
    old_train, old_test = leave_last_out(read_user_file(plays, CsvOptions()).inter)  # file order decides "latest"
    old_seen = _share_seen_in_train(old_train, old_test)
    assert old_seen < 0.5 and random_seen > 0.7 and random_seen > old_seen + 0.3, (old_seen, random_seen)


def _share_seen_in_train(train: Interactions, test: Interactions) -> float:
    """Share of held-out items that occur in training at all (an unseen one can never be learnt)."""
    return float(np.isin(test.items, train.items).mean())


def test_friction_7_play_counts_become_weights_only_when_asked(plays: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = ["--dataset", "csv", "--data-dir", str(plays), "--protocol", "R1", "--split", "random-one"]
    with caplog.at_level(logging.WARNING):
        plain = _dataset(base)
    assert "pass --set csv.weight-col=2" in caplog.text
    assert np.all(plain.train.weights == 1.0)  # type: ignore[attr-defined]
    weighted = _dataset([*base, "--weight-col", "2", "--set", "csv.weight-alpha=0.5"])
    counts = np.array([int(line.split("\t")[2]) for line in plays.read_text().splitlines()])
    train = weighted.train  # type: ignore[attr-defined]
    assert np.allclose(np.sort(np.concatenate([train.weights, weighted.test.weights])),  # type: ignore[attr-defined]
                       np.sort(1 + 0.5 * np.log1p(counts)), atol=1e-6)


def test_friction_8_own_train_and_test_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = "".join(f"u{u}\ti{(u + k) % 25}\n" for u in range(30) for k in range(5))
    test = "".join(f"u{u}\ti{(u + 7) % 25}\n" for u in range(30)) + "stranger\ti1\n"
    (tmp_path / "train.tsv").write_text(train)
    (tmp_path / "test.tsv").write_text(test)
    argv = ["--dataset", "csv", "--protocol", "R1", "--split", "files", "--set", "model.recency-boost=0"]
    code, out, _ = _run([*argv, "--data-dir", str(tmp_path / "train.tsv"), "--test-file", str(tmp_path / "test.tsv"),
                         *FAST], capsys)
    assert code == 0 and "hr@10" in out
    data = _dataset([*argv, "--data-dir", str(tmp_path)])  # a folder with train.* and test.*
    assert (len(data.train), len(data.test)) == (150, 30)  # type: ignore[attr-defined]
    message = _error([*argv, "--data-dir", str(tmp_path / "train.tsv")], capsys)
    assert "split=files needs the test file: pass --set split.test-file=" in message


def test_friction_8_random_hold_outs_are_seeded_and_reproducible(plays: Path) -> None:
    base = ["--dataset", "csv", "--data-dir", str(plays), "--protocol", "R1"]
    a = _dataset([*base, "--split", "random-one", "--set", "split.seed=4"])
    b = _dataset([*base, "--split", "random-one", "--set", "split.seed=4"])
    c = _dataset([*base, "--split", "random-one", "--set", "split.seed=5"])
    assert np.array_equal(a.test.items, b.test.items)  # type: ignore[attr-defined]
    assert not np.array_equal(a.test.items, c.test.items)  # type: ignore[attr-defined]
    assert np.bincount(a.test.users).max() == 1  # type: ignore[attr-defined]
    frac = _dataset([*base, "--split", "random-fraction", "--set", "split.fraction=0.5"])
    n_test = np.bincount(frac.test.users, minlength=frac.n_users)  # type: ignore[attr-defined]
    n_all = n_test + np.bincount(frac.train.users, minlength=frac.n_users)  # type: ignore[attr-defined]
    assert np.array_equal(n_test, np.minimum(np.ceil(0.5 * n_all), n_all - 1))


def test_friction_9_recency_weighting_refuses_constant_timestamps(
    plays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _error(["--dataset", "csv", "--data-dir", str(plays), "--protocol", "R1", "--split", "random-one"],
                     capsys)
    assert "model.recency-boost=4" in message and "pass --set model.recency-boost=0" in message


def test_leave_last_needs_timestamps(plays: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = _error(["--dataset", "csv", "--data-dir", str(plays), "--protocol", "R1", "--split", "leave-last"],
                     capsys)
    assert "split=leave-last" in message and "csv.timestamp-col=" in message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "split=latest"], "split: 'latest' is not one of protocol, random-one"),
        (["--set", "split.fraction=1.5"], "split.fraction: a number strictly between 0 and 1"),
        (["--set", "split.test-file=t.tsv"], "split.test-file: only used with split=files"),
        (["--set", "csv.header=maybe"], "csv.header: 'auto', 'true' or 'false'"),
        (["--set", "csv.user-col=-1"], "csv.user-col: a 0-based column index is >= 0"),
        (["--set", "csv.weight-alpha=-1"], "csv.weight-alpha: a finite number >= 0"),
        (["--set", "csv.timestamp-column=3"], "csv.timestamp-column: unknown configuration key; did you mean"),
        (["--split", "files"], "split: 'files' reads your own train and test files; pass --set dataset=csv"),
    ],
)
def test_bad_data_keys_name_the_key(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _error(argv, capsys)


def test_config_file_and_subprocess_exit_code(plays: Path, tmp_path: Path) -> None:
    conf = tmp_path / "mine.toml"
    conf.write_text(f'dataset = "csv"\n"data-dir" = "{plays}"\nprotocol = "R1"\nsplit = "random-one"\n'
                    '[csv]\nsep = "\\t"\n"weight-col" = 7\n')
    proc = subprocess.run([sys.executable, "-m", "fedrec.cli", "train-central", "--config", str(conf)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("fedrec train-central: error:")
    assert "csv.weight-col=7 is out of range: the file has 3 columns" in proc.stderr


def test_simulate_and_sweep_read_the_same_keys(plays: Path, tmp_path: Path) -> None:
    from fedrec.simulations import cli as sim_cli
    from fedrec.simulations import sweep
    from fedrec.simulations.runner import validate

    from fedrec.errors import ConfigError

    conf = tmp_path / "mine.toml"
    conf.write_text(f'dataset = "csv"\n"data-dir" = "{plays}"\nprotocol = "R1"\n[split]\nseed = 3\n')
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    cfg = sim_cli.resolve_config(parser.parse_args(["--config", str(conf), "--split", "random-one",
                                                    "--set", "csv.weight-col=2"]))
    assert cfg.data.split.kind == "random-one" and cfg.data.split.seed == 3 and cfg.data.csv.weight_col == 2
    with pytest.raises(ConfigError, match="model.recency-boost"):
        validate(cfg)
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    base, _ = sweep.base_config(parser.parse_args(["privacy", "--config", str(conf), "--set", "split=random-one"]))
    again = RunConfig.from_flat({**base, "model.recency-boost": 0.0})
    assert again.data.split.kind == "random-one" and again.data.csv == cfg.data.csv.__class__()
    assert validate(again) == load_run_dataset(again.data).n_users
