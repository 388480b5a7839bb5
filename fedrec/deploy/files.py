"""Private files: written atomically, owner-only, never silently overwritten.

Why a helper: every secret the deployment creates (CA key, server key, device
auth keys, the model-signing key) must be ``0600`` from its first byte on disk
and must not replace an existing secret unless the operator says ``--force``,
because a replaced CA key invalidates every device already provisioned.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedrec.errors import DeployError
from fedrec.store.atomic import atomic_write_bytes


def refuse_existing(paths: list[Path], *, force: bool) -> None:
    """Raise if any of ``paths`` exists and ``force`` is off (names the first one)."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise DeployError(f"{path}: already exists (use --force to replace it; devices provisioned "
                              "with the old material will stop working)")


def write_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` atomically; ``private`` files are ``0600`` (owner read/write only)."""
    path = Path(path)
    atomic_write_bytes(path, data)  # mkstemp creates the temporary file 0600, and the rename keeps it
    os.chmod(path, 0o600 if private else 0o644)


def read_file(path: Path, *, what: str) -> bytes:
    """Read a deployment file; a missing or unreadable one is a one-line error naming it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DeployError(f"{path}: {what} file not found") from exc
    except OSError as exc:
        raise DeployError(f"{path}: cannot read {what}: {exc.strerror}") from exc
