"""Device authentication keys and the server's model-signing key.

Two kinds of key, two jobs:

* a SuperNode authentication key per device: Flower 1.42 authenticates a
  SuperNode by an EC key on a NIST curve, the private half in OpenSSH format
  (``flower-supernode --auth-supernode-private-key``), the public half in
  OpenSSH format registered with ``flwr supernode register``. We use P-384.
* one Ed25519 model-signing key for the server: ``fedrec server export``
  signs model artifacts with it (:mod:`fedrec.store.artifact`); apps are
  provisioned with its public half.

Private halves are written ``0600`` and never overwritten without ``force``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.errors import DeployError

from .files import read_file, refuse_existing, write_file

SIGNING_KEY, SIGNING_PUB = "signing.key", "signing.pub"
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
    try:
        key = serialization.load_pem_private_key(read_file(path, what="model-signing key"), password=None)
    except ValueError as exc:
        raise DeployError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DeployError(f"{path}: a {type(key).__name__}, expected an Ed25519 signing key")
    return key
