"""Server checkpoints: the whole state needed to resume a run, written atomically.

A checkpoint file is ``MAGIC`` (one line naming the format and its version), a
SHA-256 digest of the rest, then an ``.npz`` archive (no pickles) holding the
global table, the server optimizer's moments and a JSON header (round, global
mean, optimizer step count, cohort-sampler RNG state, privacy accountant
history, run configuration). The digest covers every byte after it, so a
truncated file or a flipped byte anywhere is refused before anything is
parsed; the header is then checked field by field (round, shapes, optimizer),
and every refusal is a :class:`~fedrec.errors.CheckpointError` naming the file
and the rule.

Writing never replaces a good checkpoint with a bad one: the new bytes are
read back and validated in memory first, the current file is kept as
``<name>.prev<suffix>`` (a hard link, so ``checkpoint.npz`` itself is never
missing), and the new file replaces it through
:func:`fedrec.store.atomic.atomic_write_bytes`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.errors import CheckpointError, ConfigError, FedRecError
from fedrec.federated.server_state import ServerState
from fedrec.model.params import GlobalParams
from fedrec.store.atomic import atomic_write_bytes
from fedrec.train.aggregate import AVERAGINGS, ServerOptConfig, ServerOptimizer

FORMAT = "fedrec-checkpoint/2"
#: The checkpoint's name in a run folder (its predecessor: :func:`previous_path`).
CHECKPOINT_FILE = "checkpoint.npz"
MAGIC = (FORMAT + "\n").encode()
_DIGEST_BYTES = 32
_OPT_PREFIX = "opt."
_ZIP_MAGIC = b"PK\x03\x04"


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path``'s current one is kept (``checkpoint.prev.npz``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checkpoint_bytes(state: ServerState, *, extra: dict[str, Any] | None = None) -> bytes:
    """The file content for ``state``: magic line, digest, npz archive."""
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
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as one array-like
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def save_checkpoint(path: Path, state: ServerState, *, extra: dict[str, Any] | None = None) -> None:
    """Validate, keep the current file as the previous one, then write ``state`` atomically.

    Raises
    ------
    CheckpointError
        When the new checkpoint does not read back (e.g. a non-finite value in
        ``extra``) or cannot be written; the files on disk are then unchanged.
    """
    path = Path(path)
    try:
        blob = checkpoint_bytes(state, extra=extra)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: refusing to write a checkpoint that is not valid JSON/npz: {exc}") from exc
    parse_checkpoint(blob, where=f"{path} (before writing)")
    if _intact(path):
        _keep_previous(path)
    atomic_write_bytes(path, blob)


def load_checkpoint(path: Path, *, n_items: int | None = None,
                    dim: int | None = None) -> tuple[ServerState, dict[str, Any]]:
    """Read and validate a checkpoint; ``n_items``/``dim``: the shapes the run configuration expects.

    Raises
    ------
    CheckpointError
        Naming the file and the rule: missing, truncated or altered (digest),
        another format or version, an invalid header field (negative round,
        optimizer settings) or a table of another shape than expected.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from exc
    state, extra = parse_checkpoint(blob, where=str(path))
    if n_items is not None and dim is not None and state.glob.item_factors.shape != (n_items, dim):
        raise CheckpointError(f"{path}: item table {state.glob.item_factors.shape} does not match the run "
                              f"configuration ({n_items} items, model.dim {dim}): a checkpoint of another model")
    return state, extra


def parse_checkpoint(blob: bytes, *, where: str) -> tuple[ServerState, dict[str, Any]]:
    """The state held by checkpoint bytes; ``where`` names them in errors."""
    payload = _verified_payload(blob, where)
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{where}: digest matches but the archive does not parse: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(f"{where}: format {found!r}, expected {FORMAT!r}")
    return _state_from(header, arrays, where), _field(header, "extra", dict, where)


def _verified_payload(blob: bytes, where: str) -> bytes:
    if blob.startswith(_ZIP_MAGIC):
        raise CheckpointError(f"{where}: format 'fedrec-checkpoint/1' (a bare npz archive) is not supported; "
                              f"this version reads {FORMAT!r}")
    if not blob.startswith(MAGIC):
        first = blob[:40].split(b"\n", 1)[0].decode("utf-8", "replace")
        if first.startswith("fedrec-checkpoint/"):
            raise CheckpointError(f"{where}: format {first!r}, expected {FORMAT!r}")
        raise CheckpointError(f"{where}: not a fedrec checkpoint (expected a first line {FORMAT!r})")
    digest, payload = blob[len(MAGIC):len(MAGIC) + _DIGEST_BYTES], blob[len(MAGIC) + _DIGEST_BYTES:]
    if len(digest) < _DIGEST_BYTES or not payload:
        raise CheckpointError(f"{where}: truncated ({len(blob)} bytes): no content after the header")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{where}: SHA-256 digest mismatch: the file is truncated or altered")
    return payload


def _state_from(header: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> ServerState:
    rnd = _field(header, "round", int, where)
    if rnd < 0:
        raise CheckpointError(f"{where}: round must be >= 0, got {rnd}")
    mean = header.get("global_mean")
    if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
        raise CheckpointError(f"{where}: global_mean must be a finite number, got {mean!r}")
    averaging = _field(header, "averaging", str, where)
    if averaging not in AVERAGINGS:
        raise CheckpointError(f"{where}: averaging {averaging!r} is not one of {AVERAGINGS}")
    opt_header = _field(header, "optimizer", dict, where)
    try:
        glob = GlobalParams.from_arrays(arrays, float(mean))
        opt = ServerOptimizer(ServerOptConfig(**_field(opt_header, "config", dict, where)))
        step_count = _field(opt_header, "step_count", int, where)
        moments = {k[len(_OPT_PREFIX):]: v for k, v in arrays.items() if k.startswith(_OPT_PREFIX)}
        for name, moment in moments.items():
            if moment.shape != (glob.item_factors if name.startswith("item_factors") else glob.item_bias).shape:
                raise CheckpointError(f"{where}: optimizer moment {name!r} has shape {moment.shape}, "
                                      "not the table's")
        opt.load_state(moments, step_count)
        rng = np.random.default_rng()
        rng.bit_generator.state = _field(header, "rng", dict, where)
    except CheckpointError:
        raise
    except (FedRecError, ConfigError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{where}: invalid content: {exc}") from exc
    return ServerState(glob, opt, averaging, rnd, rng)


def _field(header: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"{where}: header field {name!r} must be a {kind.__name__}, got {value!r}")
    return value


def _intact(path: Path) -> bool:
    """True when ``path`` holds a checkpoint whose digest verifies (only such a file becomes the previous)."""
    try:
        _verified_payload(path.read_bytes(), str(path))
    except (OSError, CheckpointError):
        return False
    return True


def _keep_previous(path: Path) -> None:
    """Hard-link the current checkpoint to its ``.prev`` name (a copy where links are not supported)."""
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(prev, path.read_bytes())
