"""``fedrec sweep privacy``: the quick path end to end, the table and the plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from fedrec.simulations.sweep import main, markdown, measure_sweep, points


def test_points_cover_units_and_epsilons() -> None:
    pts = points([1.0, math.inf], ["E1", "R1"])
    assert len(pts) == 2 * (1 + 2 * 2)
    assert {(p.protocol, p.unit) for p in pts if p.epsilon is None} == {("E1", "off"), ("R1", "off")}


def test_quick_sweep_writes_table_and_plot(tmp_path: Path) -> None:
    rows = measure_sweep({}, tmp_path, quick=True, epsilons=[8.0, math.inf])
    files = {p.name for p in tmp_path.iterdir()}
    assert {"sweep.csv", "sweep.md", "sweep.png"} <= files and (tmp_path / "sweep.png").stat().st_size > 1000
    table = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert len(table) == len(rows) == 2 * (1 + 2 * 2)
    by_key = {(r["protocol"], r["unit"], r["epsilon_target"]): r for r in table}
    assert by_key[("R1", "rating", "8.0")]["status"].startswith("n/a")
    for unit in ("rating", "user"):
        eight = by_key[("E1", unit, "8.0")]
        assert eight["status"] == "ok" and 0 < float(eight["epsilon"]) <= 8.0 and float(eight["rmse"]) > 0
        assert by_key[("E1", unit, "inf")]["epsilon"] == "inf"
    assert float(by_key[("R1", "user", "8.0")]["hr@10"]) >= 0
    text = (tmp_path / "sweep.md").read_text()
    assert "## E1 (rmse)" in text and "## R1 (hr@10)" in text and text == markdown(rows)


def test_cli_reports_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["privacy", "--quick", "--protocols", "X9", "--out", str(tmp_path)]) == 2
    assert "--protocols" in capsys.readouterr().err
    assert main(["privacy", "--quick", "--set", "nobody:rounds=2", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_full_quick_sweep_from_the_command_line(tmp_path: Path) -> None:
    assert main(["privacy", "--quick", "--out", str(tmp_path)]) == 0
    assert len(list(csv.DictReader((tmp_path / "sweep.csv").open()))) == 2 * (1 + 2 * 6)
