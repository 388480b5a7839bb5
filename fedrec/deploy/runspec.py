"""A deployed run: how its configuration reaches the ServerApp, and what its run folder records.

Why an envelope: ``flwr run --run-config`` only overrides keys already declared
in ``[tool.flwr.app.config]``, but a fedrec configuration also has optional keys
(``dp.epsilon``) and open families (``synthetic.*``). So ``fedrec server run``
resolves and validates the configuration first, then ships it as one JSON
string under :data:`CONFIG_KEY`, next to :data:`RESUME_KEY`; the ServerApp
unpacks it with :func:`from_run_config`. Plain ``flwr run .`` (no envelope)
keeps working with the declared keys.

A run folder (``<state>/runs/<name>/``) holds ``config.toml`` (the resolved
configuration), ``run.json`` (the Flower run ids of its attempts), the
ServerApp's ``status.json``, ``metrics.jsonl`` and ``checkpoint.npz``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError, DeployError
from fedrec.runconfig import RunConfig
from fedrec.store.atomic import atomic_write_text

CONFIG_KEY = "deploy.config"
RESUME_KEY = "deploy.resume"
ENVELOPE_DEFAULTS: dict[str, Any] = {CONFIG_KEY: "", RESUME_KEY: False}  # declared in [tool.flwr.app.config]
RUN_JSON, STATUS_JSON, METRICS, CHECKPOINT = "run.json", "status.json", "metrics.jsonl", "checkpoint.npz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def envelope(cfg: RunConfig, *, resume: bool) -> dict[str, Any]:
    """The two Flower run-config values that carry a resolved fedrec configuration."""
    return {CONFIG_KEY: json.dumps(dict(cfg.flat), sort_keys=True), RESUME_KEY: bool(resume)}


def from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, Path, bool]:
    """Configuration, run folder and resume flag from a ServerApp's ``context.run_config``."""
    flat = {k: v for k, v in run_config.items() if k not in (CONFIG_KEY, RESUME_KEY)}
    packed = str(run_config.get(CONFIG_KEY, "") or "")
    if packed:
        try:
            flat = json.loads(packed)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{CONFIG_KEY}: not JSON: {exc}") from exc
        if not isinstance(flat, dict):
            raise ConfigError(f"{CONFIG_KEY}: expected a JSON object")
    cfg = RunConfig.from_flat(flat)
    return cfg, Path(str(cfg.flat["run-dir"])), bool(run_config.get(RESUME_KEY, False))


def check_name(name: str, *, what: str = "run name") -> str:
    """A name usable as a folder: letters, digits, '.', '_' or '-'."""
    if not _NAME.match(name):
        raise DeployError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


@dataclass(frozen=True)
class RunRecord:
    """``run.json``: the run's name and, per attempt (first run, then resumes), the Flower run id and the
    pid of the SuperLink it was submitted to. A SuperLink that restarted since an attempt means that
    attempt's ServerApp died with the old one, whatever Flower's database still says."""

    name: str
    flower_runs: tuple[int, ...]
    superlinks: tuple[int, ...] = ()

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / RUN_JSON, json.dumps({"name": self.name, "flower_runs": list(self.flower_runs),
                                                         "superlinks": list(self.superlinks)}))

    def attempt(self, flower_run: int, superlink: int) -> RunRecord:
        return RunRecord(self.name, (*self.flower_runs, flower_run), (*self.superlinks, superlink))

    def orphaned(self, current_superlink: int | None) -> bool:
        """Whether the last attempt ran under a SuperLink that is no longer the running one."""
        return bool(self.superlinks) and self.superlinks[-1] != current_superlink

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        try:
            data = json.loads((folder / RUN_JSON).read_text())
            return cls(str(data["name"]), tuple(int(r) for r in data["flower_runs"]),
                       tuple(int(p) for p in data.get("superlinks", [])))
        except FileNotFoundError as exc:
            raise DeployError(f"{folder}: no {RUN_JSON}: not a run started by 'fedrec server run'") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeployError(f"{folder / RUN_JSON}: unreadable run record: {exc}") from exc


def write_status(folder: Path, state: str, **fields: Any) -> None:
    """The ServerApp's own view of the run (``running``, ``finished``, ``failed``) with details."""
    atomic_write_text(folder / STATUS_JSON, json.dumps({"state": state, **fields}))


def read_status(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / STATUS_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a torn last line from a crash mid-write is skipped)."""
    try:
        lines = (folder / METRICS).read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def summary(folder: Path, *, flower_status: str | None = None) -> dict[str, Any]:
    """One run at a glance: state, rounds done of planned, survivors, dropouts, latest metrics, epsilon."""
    rows = read_metrics(folder)
    status = read_status(folder)
    latest: dict[str, Any] = {}
    for row in rows:
        latest.update(row)
    state = str(status.get("state", "unknown"))
    if state == "running" and flower_status and not flower_status.startswith(("running", "starting", "pending")):
        state = "stopped"
    return {"name": folder.name, "state": state, "flower_status": flower_status, "round": latest.get("round", 0),
            "rounds": status.get("rounds"), "sampled": latest.get("sampled"),
            "survivors": latest.get("survivors"), "dropouts": sum(int(r.get("dropouts", 0)) for r in rows),
            "epsilon": latest.get("epsilon"), "metrics": {k: latest[k] for k in _SHOWN if k in latest},
            "error": status.get("error")}


_SHOWN = ("rmse", "mae", "hr@10", "ndcg@10", "recall@10")
