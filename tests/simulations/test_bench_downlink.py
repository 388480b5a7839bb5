"""``python -m simulations.bench_downlink``: the figures README quotes, from the server's own builders."""

from __future__ import annotations

from fedrec.simulations.bench_downlink import measure

from fedrec.runconfig import RunConfig


def test_the_downlink_no_longer_carries_the_run_configuration() -> None:
    result = measure("ml-100k", 1682, 32, "E1")
    train, evaluate = result["train"], result["evaluate"]
    assert (train["keys_after"], evaluate["keys_after"]) == (3, 5)  # round, mu, digest (+ rating scale)
    # before: every key of the resolved run configuration rode in every downlink
    flat = RunConfig.from_flat({"dataset": "ml-100k", "protocol": "E1"}).flat
    assert train["keys_before"] == len(flat) + 2  # + round, mu
    assert train["config_bytes_after"] < 200
    assert train["saved_bytes"] == train["config_bytes_before"] - train["config_bytes_after"] > 1500
    assert train["message_bytes_after"] > 1682 * 33 * 4  # the float32 table itself
