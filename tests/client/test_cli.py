"""``fedrec device join``'s SuperNode command: the node config Flower's own parser reads back."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedrec.client.cli import _parser, supernode_command
from flwr.common.config import parse_config_args

from fedrec import wire
from fedrec.errors import DeployError


def _node_config(cmd: list[str]) -> dict[str, object]:
    return parse_config_args([cmd[cmd.index("--node-config") + 1]])


def test_identity_is_merged_into_the_node_config(tmp_path: Path) -> None:
    base = ["join", "--superlink", "h:1", "--ca", "ca.pem", "--key", "k", "--clientapp-port", "9"]
    args = _parser().parse_args([*base, "--partition-id", "3", "--identity", str(tmp_path / "d 0.identity"),
                                 "--node-config", "zone=\"eu\""])
    assert _node_config(supernode_command(args)) == {
        "zone": "eu", wire.NODE_PARTITION_ID: 3, wire.NODE_IDENTITY: str((tmp_path / "d 0.identity").resolve())}
    twice = _parser().parse_args([*base, "--identity", "x", "--node-config", f'{wire.NODE_IDENTITY}="y"'])
    with pytest.raises(DeployError, match="give the identity once"):
        supernode_command(twice)
    assert "--node-config" not in supernode_command(_parser().parse_args(base))


def test_eval_min_cohort_is_the_devices_own_node_config() -> None:
    base = ["join", "--superlink", "h:1", "--ca", "ca.pem", "--key", "k", "--clientapp-port", "9"]
    args = _parser().parse_args([*base, "--eval-min-cohort", "7"])
    assert _node_config(supernode_command(args)) == {wire.NODE_EVAL_MIN_COHORT: 7}
    with pytest.raises(DeployError, match="--eval-min-cohort: must be >= 2, got 1"):
        supernode_command(_parser().parse_args([*base, "--eval-min-cohort", "1"]))
    twice = _parser().parse_args([*base, "--eval-min-cohort", "7", "--node-config", f"{wire.NODE_EVAL_MIN_COHORT}=2"])
    with pytest.raises(DeployError, match="give it once"):
        supernode_command(twice)
