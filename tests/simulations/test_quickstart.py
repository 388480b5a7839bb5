"""`fedrec simulate` with no arguments starts from the quick-start file; --config, --dataset or --set replace it."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.simulations.cli import add_arguments, resolve_config


def _resolve(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return dict(resolve_config(parser.parse_args(list(argv))).flat)


def test_no_arguments_is_the_quick_start() -> None:
    flat = _resolve()
    assert (flat["dataset"], flat["cohort"], flat["rounds"], flat["eval-every"]) == ("synthetic", 0.2, 25, 25)


def test_any_set_starts_from_the_plain_defaults() -> None:
    flat = _resolve("--set", "synthetic.n-users=6")
    assert (flat["cohort"], flat["rounds"], flat["eval-every"]) == (1.0, 30, 5)


def test_a_dataset_or_a_config_file_leaves_the_quick_start_out() -> None:
    assert _resolve("--dataset", "synthetic")["cohort"] == 1.0
    conf = Path(__file__).parents[2] / "simulations" / "conf" / "synthetic.toml"
    assert _resolve("--config", str(conf))["rounds"] == 20
