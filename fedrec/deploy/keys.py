"""Device authentication keys, device identities and the server's model-signing key.

Three kinds of key, three jobs:

* a SuperNode authentication key per device: Flower 1.42 authenticates a
  SuperNode by an EC key on a NIST curve, the private half in OpenSSH format
  (``flower-supernode --auth-supernode-private-key``), the public half in
  OpenSSH format registered with ``flwr supernode register``. We use P-384.
* one Ed25519 model-signing key for the server: ``fedrec server export``
  signs model artifacts with it (:mod:`fedrec.store.artifact`); apps are
  provisioned with its public half.
* an Ed25519 *enrolment authority* key that certifies one Ed25519 identity
  per device for secure aggregation (:mod:`fedrec.secagg.crypto.identity`):
  peers refuse key advertisements not signed by a certified identity, so a
  server that substitutes keys is caught. The authority must not be the
  server (assumption A2 of the threat model): ``fedrec server keys`` keeps it
  in its own folder (``<state>/authority/``) so a single-machine trial works,
  but in production it belongs to a separate party, on another machine, that
  issues the identity folders itself.

Private halves are written ``0600`` and never overwritten without ``force``.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.errors import DeployError, SecAggConfigError
from fedrec.secagg.crypto.identity import (
    AUTHORITY_FILE,
    CERTIFICATE_FILE,
    IDENTITY_KEY_FILE,
    Authority,
    DeviceIdentity,
    load_identity,
    save_identity,
)

from .files import read_file, refuse_existing, write_file

SIGNING_KEY, SIGNING_PUB = "signing.key", "signing.pub"
AUTHORITY_KEY = "authority.key"
IDENTITY_SUFFIX = ".identity"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class DeviceKey:
    """A device's authentication key pair on disk."""

    name: str
    private: Path
    public: Path


def device_key_paths(folder: Path, name: str) -> DeviceKey:
    """Where device ``name``'s key pair lives (``<folder>/<name>.key`` and ``.pub``)."""
    if not _NAME.match(name):
        raise DeployError(f"device name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return DeviceKey(name, Path(folder) / f"{name}.key", Path(folder) / f"{name}.pub")


def make_device_key(folder: Path, name: str, *, force: bool = False) -> DeviceKey:
    """A P-384 SuperNode authentication key pair in OpenSSH format."""
    paths = device_key_paths(folder, name)
    refuse_existing([paths.private, paths.public], force=force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_file(paths.private, private, private=True)
    write_file(paths.public, public + f" fedrec-device-{name}\n".encode(), private=False)
    return paths


def check_device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device's private key, refused unless it is an OpenSSH EC key Flower accepts."""
    try:
        key = serialization.load_ssh_private_key(read_file(path, what="device authentication key"), password=None)
    except ValueError as exc:
        raise DeployError(f"{path}: not an OpenSSH private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{path}: a {type(key).__name__}; SuperNode authentication needs a NIST EC key")
    return key


def make_signing_key(folder: Path, *, force: bool = False) -> tuple[Path, Path]:
    """The server's Ed25519 model-signing key (PKCS#8 PEM) and its public half (PEM)."""
    private, public = Path(folder) / SIGNING_KEY, Path(folder) / SIGNING_PUB
    refuse_existing([private, public], force=force)
    key = Ed25519PrivateKey.generate()
    write_file(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), private=True)
    write_file(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo), private=False)
    return private, public


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The model-signing key; anything but an Ed25519 private key is refused."""
    return _load_ed25519(path, what="model-signing key", expected="an Ed25519 signing key")


def _load_ed25519(path: Path, *, what: str, expected: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; the error names the file and what it holds instead."""
    try:
        key = serialization.load_pem_private_key(read_file(path, what=what), password=None)
    except ValueError as exc:
        raise DeployError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DeployError(f"{path}: a {type(key).__name__}, expected {expected}")
    return key


# ---------------------------------------------------------------- enrolment authority and device identities


def make_authority(folder: Path, *, force: bool = False) -> tuple[Path, Path]:
    """The enrolment authority's Ed25519 key (PKCS#8 PEM, ``0600``) and its public half (32 raw bytes).

    The public half (``authority.pub``) is the trust anchor every device
    checks its peers' certificates against; it is copied into each identity
    folder. Existing files are never replaced without ``force``: a new
    authority invalidates every identity already issued.
    """
    private, public = Path(folder) / AUTHORITY_KEY, Path(folder) / AUTHORITY_FILE
    refuse_existing([private, public], force=force)
    Path(folder).mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = Ed25519PrivateKey.generate()
    write_file(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), private=True)
    write_file(public, key.public_key().public_bytes_raw(), private=False)
    return private, public


def load_authority(path: Path) -> Authority:
    """The enrolment authority from its private key file; anything but an Ed25519 key is refused."""
    return Authority(_load_ed25519(path, what="enrolment authority key",
                                   expected="an Ed25519 enrolment authority key"))


def identity_dir(folder: Path, name: str) -> Path:
    """Where device ``name``'s identity folder lives (``<folder>/<name>.identity``)."""
    return device_key_paths(folder, name).private.with_suffix(IDENTITY_SUFFIX)


def make_device_identity(folder: Path, name: str, authority: Authority, *, force: bool = False) -> Path:
    """Enrol device ``name``: a fresh Ed25519 identity certified by ``authority``, in its own folder.

    The folder holds ``identity.pem`` (``0600``), ``identity.cert`` and
    ``authority.pub`` (:func:`fedrec.secagg.crypto.identity.save_identity`)
    and is itself ``0700``. The enrolment id (the certificate's subject) is
    random 64 bits: peers refuse two nodes that present one id, and random
    ids need no registry shared between authorities or state folders.
    The written folder is read back with ``load_identity`` before returning.
    """
    target = identity_dir(folder, name)
    refuse_existing([target / IDENTITY_KEY_FILE, target / CERTIFICATE_FILE], force=force)
    identity: DeviceIdentity = authority.enrol(secrets.randbits(64))
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    save_identity(target, identity, authority_key=authority.public_key)
    check_identity(target)
    return target


def check_identity(folder: Path) -> DeviceIdentity:
    """A device's identity folder, refused unless its certificate verifies under the folder's authority."""
    base = Path(folder)
    if not base.is_dir():
        raise DeployError(f"{base}: identity folder not found (holds {IDENTITY_KEY_FILE}, {CERTIFICATE_FILE}, "
                          f"{AUTHORITY_FILE}; made by 'fedrec server keys')")
    try:
        identity, _ = load_identity(base / IDENTITY_KEY_FILE, base / CERTIFICATE_FILE, base / AUTHORITY_FILE)
    except SecAggConfigError as exc:
        raise DeployError(str(exc)) from exc
    return identity
