"""Server checkpoints: the whole state needed to resume a run, written atomically.

One ``.npz`` file holds the global table, the server optimizer's moments and a
JSON header (round, global mean, optimizer step count, cohort-sampler RNG
state, privacy accountant history, run configuration). It is written through
:func:`fedrec.store.atomic.atomic_write_bytes`, so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.errors import CheckpointError
from fedrec.federated.server_state import ServerState
from fedrec.model.params import GlobalParams
from fedrec.store.atomic import atomic_write_bytes
from fedrec.train.aggregate import ServerOptConfig, ServerOptimizer

FORMAT = "fedrec-checkpoint/1"
_OPT_PREFIX = "opt."


def save_checkpoint(path: Path, state: ServerState, *, extra: dict[str, Any] | None = None) -> None:
    """Write ``state`` (and JSON-able ``extra``, e.g. accountant history, config) atomically."""
    header = {
        "format": FORMAT,
        "round": state.round,
        "global_mean": state.glob.global_mean,
        "averaging": state.averaging,
        "optimizer": {"config": vars(state.optimizer.config), "step_count": state.optimizer.step_count},
        "rng": state.rng.bit_generator.state,
        "extra": extra or {},
    }
    arrays = {**state.glob.arrays(), **{_OPT_PREFIX + k: v for k, v in state.optimizer.state_arrays().items()}}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path) -> tuple[ServerState, dict[str, Any]]:
    """Read a checkpoint back; ``CheckpointError`` names the file and what is wrong."""
    path = Path(path)
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable fedrec checkpoint: {exc}") from exc
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    glob = GlobalParams.from_arrays(arrays, header["global_mean"])
    opt = ServerOptimizer(ServerOptConfig(**header["optimizer"]["config"]))
    opt.load_state({k[len(_OPT_PREFIX):]: v for k, v in arrays.items() if k.startswith(_OPT_PREFIX)},
                   header["optimizer"]["step_count"])
    rng = np.random.default_rng()
    rng.bit_generator.state = header["rng"]
    return ServerState(glob, opt, header["averaging"], int(header["round"]), rng), header["extra"]
