"""The example app's whole flow, driven through stdin, with no server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(store: Path, script: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FEDREC_DATA_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "fedrec.client.example", "--store", str(store),
                           "--catalogue", "synthetic"], input=script, capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _blocks(out: str) -> list[list[int]]:
    """Each printed top list as its item numbers."""
    blocks, cur = [], []
    for line in out.splitlines():
        m = re.match(r"\s+\d+\. \[(\d+)\]", line)
        if m:
            cur.append(int(m.group(1)))
        elif cur:
            blocks.append(cur)
            cur = []
    return blocks + ([cur] if cur else [])


def test_example_flow_end_to_end(tmp_path: Path) -> None:
    store = tmp_path / "user.fedrec"
    first = _blocks(_run(store, ""))[0]
    out = _run(store, f"rate {first[0]} 1\nrate {first[1]} 1\nview 7\nforget 7\nhistory\nprivacy\nrate 99999 3\nquit\n")
    tops = _blocks(out)
    assert len(tops) >= 4 and tops[0] == first
    assert tops[1] != tops[0] and first[0] not in tops[1]  # one rating moves the list at once
    assert first[1] not in tops[2]
    assert "forgot [7] Item 7 (1 interactions removed)" in out
    assert "error: item 99999 is not in the catalogue" in out and "no DP training yet" in out
    again = _run(store, "history\nquit\n")  # reopened from the encrypted file
    assert f"[{first[0]}] Item {first[0]}: rated 1" in again and "[7] Item 7:" not in again
    assert (tmp_path / "user.key").stat().st_mode & 0o077 == 0
