"""Imports follow the configuration: a run without DP never loads torch or opacus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PLAIN_RUN = """
import json, sys
import numpy as np
from fedrec.client.app import make_client_app
from fedrec.server.app import catalogue_for, make_server_app
from fedrec.data.spec import shared_run_dataset
from fedrec.federated.device import device_evaluate, device_train
from fedrec.federated.policy import server_policy
from fedrec.federated.server_state import ServerState
from fedrec.runconfig import RunConfig

cfg = RunConfig.from_flat({"synthetic.n-users": 40, "synthetic.n-items": 30, "rounds": 1, **json.loads(sys.argv[1])})
make_server_app(cfg)
make_client_app()
catalogue = catalogue_for(cfg)
privacy = server_policy(cfg.privacy_plan(), population=40)
state = ServerState.start(catalogue.n_items, cfg.model, cfg.fed, global_mean=3.0)
source = shared_run_dataset(cfg.data).source(np.array([3]))
plan = cfg.privacy_plan()
device_train(source, {}, state.glob, model=cfg.model, local=cfg.fed.local, seed=0, round_=1, privacy=plan)
device_evaluate(source, {}, state.glob, model=cfg.model, local=cfg.fed.local, scale=catalogue.rating_scale,
                seed=0, privacy=plan)
print(json.dumps(sorted(m for m in ("torch", "opacus") if m in sys.modules)))
"""


def _heavy_modules(tmp_path: Path, overrides: dict[str, object]) -> list[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "FEDREC_CACHE_DIR": str(tmp_path),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PLAIN_RUN, json.dumps(overrides)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_a_plain_run_imports_neither_torch_nor_opacus(tmp_path: Path) -> None:
    assert _heavy_modules(tmp_path, {}) == []


def test_rating_level_dp_does_load_opacus(tmp_path: Path) -> None:
    """The same probe sees opacus when the configuration needs it (so the check above can fail)."""
    loaded = _heavy_modules(tmp_path, {"dp.unit": "rating", "dp.noise-multiplier": 1.0})
    assert "opacus" in loaded and "torch" in loaded
