"""Device identities on disk: ``save_identity`` / ``load_identity`` round trip and every bad file refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedrec.errors import SecAggConfigError, SecAggMessageError
from fedrec.secagg.crypto.identity import (
    AUTHORITY_FILE,
    CERTIFICATE_FILE,
    IDENTITY_KEY_FILE,
    Authority,
    Certificate,
    load_identity,
    save_identity,
)


def files(folder: Path) -> tuple[Path, Path, Path]:
    return folder / IDENTITY_KEY_FILE, folder / CERTIFICATE_FILE, folder / AUTHORITY_FILE


def test_identity_files_round_trip(tmp_path: Path) -> None:
    authority = Authority.generate()
    identity = authority.enrol(42)
    save_identity(tmp_path, identity, authority_key=authority.public_key)
    loaded, anchor = load_identity(*files(tmp_path))
    assert anchor == authority.public_key and loaded.certificate == identity.certificate
    assert (tmp_path / IDENTITY_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert "redacted" in repr(loaded) and loaded.private_bytes().hex() not in repr(loaded)


@pytest.mark.parametrize("damage", ["missing", "foreign anchor", "wrong key", "x25519 key", "short cert", "anchor"])
def test_bad_identity_files_are_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    authority = Authority.generate()
    save_identity(tmp_path, authority.enrol(1), authority_key=authority.public_key)
    key, cert, anchor = files(tmp_path)
    if damage == "missing":
        cert.unlink()
        culprit = cert
    elif damage == "foreign anchor":
        anchor.write_bytes(Authority.generate().public_key)
        culprit = cert
    elif damage == "wrong key":
        save_identity(tmp_path / "other", authority.enrol(2), authority_key=authority.public_key)
        key.write_bytes((tmp_path / "other" / IDENTITY_KEY_FILE).read_bytes())
        culprit = cert
    elif damage == "x25519 key":
        key.write_bytes(X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        culprit = key
    elif damage == "short cert":
        cert.write_bytes(cert.read_bytes()[:-1])
        culprit = cert
    else:
        anchor.write_bytes(b"\x00" * 31)
        culprit = anchor
    with pytest.raises(SecAggConfigError, match=str(culprit)):
        load_identity(key, cert, anchor)


def test_certificate_parsing_refuses_malformed_bytes() -> None:
    good = Authority.generate().enrol(3).certificate.to_bytes()
    for bad in (good[:-1], b"XXXX" + good[4:], "text"):
        with pytest.raises(SecAggMessageError, match="certificate must be 108 bytes"):
            Certificate.from_bytes(bad)  # type: ignore[arg-type]
