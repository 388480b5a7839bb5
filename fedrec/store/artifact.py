"""Signed model artifacts: the only way a global model reaches a device outside a round.

The server CLI exports the global table as one file; the client SDK loads it
only if its Ed25519 signature verifies against the server key the app was
provisioned with, and only if its round is not older than the model it holds
(no rollback). Signing and verification are ``cryptography``'s Ed25519; this
module only fixes the byte layout, which is pinned by a known-answer test::

    MAGIC (8 bytes, b"FRMODEL1")
    header length (4 bytes, big-endian unsigned)
    header (UTF-8 JSON, sorted keys): format, round, run, created, n_items, dim,
        global_mean, payload_sha256, key_id
    payload (npz, no pickles): item_factors (n_items x dim float32), item_bias (n_items float32)
    signature (64 bytes): Ed25519 over everything before it

``key_id`` is the first 16 hex digits of SHA-256 of the raw public key, so a
device holding several provisioned keys (rotation) knows which one to try.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrec.errors import RollbackError, SignatureError
from fedrec.model.params import GlobalParams
from fedrec.store.atomic import atomic_write_bytes

MAGIC = b"FRMODEL1"
FORMAT = "fedrec-model/1"
_SIG = 64
_LEN = struct.Struct(">I")
_MAX_HEADER = 1 << 16


@dataclass(frozen=True)
class ModelArtifact:
    """A verified model: the table, the round it comes from and the header it was signed with."""

    glob: GlobalParams
    round: int
    run: str
    header: dict[str, Any]


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a signing key (SHA-256 of its raw bytes, 16 hex digits)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_model(glob: GlobalParams, *, round_: int, run: str, signing_key: Ed25519PrivateKey,
               created: str = "") -> bytes:
    """The artifact bytes of ``glob`` at ``round_``, signed with ``signing_key``."""
    if round_ < 0:
        raise SignatureError(f"model artifact: round {round_} is negative")
    buf = io.BytesIO()
    np.savez(buf, item_factors=np.ascontiguousarray(glob.item_factors, np.float32),
             item_bias=np.ascontiguousarray(glob.item_bias, np.float32))
    payload = buf.getvalue()
    n_items, dim = glob.item_factors.shape
    header = {"format": FORMAT, "round": int(round_), "run": run, "created": created, "n_items": int(n_items),
              "dim": int(dim), "global_mean": float(glob.global_mean),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "key_id": key_id(signing_key.public_key())}
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = MAGIC + _LEN.pack(len(head)) + head + payload
    return body + signing_key.sign(body)


def verify_model(data: bytes, *, public_key: Ed25519PublicKey, min_round: int | None = None,
                 where: str = "model artifact") -> ModelArtifact:
    """Check the signature, then the layout, then the round; raise, never return a bad model.

    Raises
    ------
    SignatureError
        Truncated or malformed bytes, a signature that does not verify under
        ``public_key`` (wrong key or any flipped bit), or a header that does
        not match the payload.
    RollbackError
        A valid artifact whose round is older than ``min_round``.
    """
    if len(data) < len(MAGIC) + _LEN.size + _SIG or not data.startswith(MAGIC):
        raise SignatureError(f"{where}: not a fedrec model artifact (bad magic or truncated)")
    body, signature = data[:-_SIG], data[-_SIG:]
    try:
        public_key.verify(signature, body)
    except InvalidSignature as exc:
        raise SignatureError(f"{where}: signature does not verify with key {key_id(public_key)} "
                             "(wrong key, or the file was altered)") from exc
    header, payload = _split(body, where)
    glob = _table(header, payload, where)
    rnd = int(header["round"])
    if min_round is not None and rnd < min_round:
        raise RollbackError(f"{where}: round {rnd} is older than the round {min_round} already held (rollback refused)")
    return ModelArtifact(glob=glob, round=rnd, run=str(header["run"]), header=header)


def _split(body: bytes, where: str) -> tuple[dict[str, Any], bytes]:
    (n,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if n > _MAX_HEADER or start + n > len(body):
        raise SignatureError(f"{where}: header length {n} out of range")
    try:
        header = json.loads(body[start:start + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{where}: header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SignatureError(f"{where}: format {header.get('format') if isinstance(header, dict) else None!r}, "
                             f"expected {FORMAT!r}")
    payload = body[start + n:]
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise SignatureError(f"{where}: payload does not match its header's digest")
    return header, payload


def _table(header: dict[str, Any], payload: bytes, where: str) -> GlobalParams:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            q, b = np.array(z["item_factors"]), np.array(z["item_bias"])
        glob = GlobalParams(q, b, float(header["global_mean"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SignatureError(f"{where}: payload is not a model table: {exc}") from exc
    if q.shape != (header["n_items"], header["dim"]):
        raise SignatureError(f"{where}: table shape {q.shape} differs from the header's "
                             f"({header['n_items']}, {header['dim']})")
    return glob


def write_model(path: Path, data: bytes) -> None:
    """Write artifact bytes atomically (a reader never sees half a model)."""
    atomic_write_bytes(Path(path), data)


def read_model(path: Path, *, public_key: Ed25519PublicKey, min_round: int | None = None) -> ModelArtifact:
    """Read and verify an artifact file; the error names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read model artifact: {exc.strerror}") from exc
    return verify_model(data, public_key=public_key, min_round=min_round, where=str(path))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM or OpenSSH file (the key an app is provisioned with)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read public key: {exc.strerror}") from exc
    try:
        key = (serialization.load_ssh_public_key(raw) if raw.startswith(b"ssh-")
               else serialization.load_pem_public_key(raw))
    except ValueError as exc:
        raise SignatureError(f"{path}: not a PEM or OpenSSH public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: key is {type(key).__name__}, expected Ed25519")
    return key
