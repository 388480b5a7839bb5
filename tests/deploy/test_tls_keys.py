"""TLS material and device keys: what Flower and TLS clients need, and every refusal before a process starts."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.deploy.keys import (
    check_device_key,
    check_identity,
    device_key_paths,
    load_authority,
    load_signing_key,
    make_authority,
    make_device_identity,
    make_device_key,
    make_signing_key,
)
from fedrec.deploy.tls import TLSFiles, check_server_tls, load_cert, sans, write_tls
from fedrec.errors import DeployError
from fedrec.secagg.crypto.identity import AUTHORITY_FILE, CERTIFICATE_FILE, IDENTITY_KEY_FILE


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_server_certificate(tmp_path: Path) -> None:
    files = write_tls(tmp_path, hosts=["127.0.0.1", "fedrec.example.org"], days=30)
    ca, cert = load_cert(files.ca_cert), load_cert(files.cert)
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["fedrec.example.org"]
    assert sans(cert) == ["fedrec.example.org", "127.0.0.1"]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc) == dt.timedelta(days=30)
    assert _mode(files.ca_key) == _mode(files.key) == 0o600
    assert _mode(files.cert) == _mode(files.ca_cert) == 0o644
    assert check_server_tls(files, host="127.0.0.1") == cert
    assert check_server_tls(files, host="FEDREC.example.org") == cert


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = write_tls(tmp_path, hosts=["127.0.0.1"], days=1)
    before = first.ca_key.read_bytes()
    with pytest.raises(DeployError, match=r"ca.pem: already exists \(use --force"):
        write_tls(tmp_path, hosts=["127.0.0.1"], days=1)
    assert first.ca_key.read_bytes() == before
    write_tls(tmp_path, hosts=["127.0.0.1"], days=1, force=True)
    assert first.ca_key.read_bytes() != before


@pytest.mark.parametrize("days", [0, -3])
def test_bad_validity_is_refused(tmp_path: Path, days: int) -> None:
    with pytest.raises(DeployError, match="--days must be >= 1"):
        write_tls(tmp_path, hosts=["127.0.0.1"], days=days)


def test_wrong_name_is_refused(tmp_path: Path) -> None:
    files = write_tls(tmp_path, hosts=["127.0.0.1"], days=1)
    with pytest.raises(DeployError, match=r"valid for \['127.0.0.1'\], not for '10.0.0.7'"):
        check_server_tls(files, host="10.0.0.7")
    with pytest.raises(DeployError, match="not for 'localhost'"):
        check_server_tls(files, host="localhost")


def test_expired_and_not_yet_valid_certificates_are_refused(tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    files = write_tls(tmp_path, hosts=["127.0.0.1"], days=2, not_before=past)
    with pytest.raises(DeployError, match=r"server.pem: expired on"):
        check_server_tls(files, host="127.0.0.1")
    later = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(DeployError, match=r"server.pem: not valid before"):
        check_server_tls(write_tls(tmp_path / "b", hosts=["127.0.0.1"], days=5), host="127.0.0.1", now=later)


def test_missing_or_malformed_files_are_refused(tmp_path: Path) -> None:
    files = write_tls(tmp_path, hosts=["127.0.0.1"], days=1)
    files.cert.unlink()
    with pytest.raises(DeployError, match=r"server.pem: server certificate file not found"):
        check_server_tls(files, host="127.0.0.1")
    files.cert.write_text("not a certificate")
    with pytest.raises(DeployError, match=r"server.pem: not a PEM server certificate"):
        check_server_tls(files, host="127.0.0.1")


def test_certificate_of_another_ca_or_key_is_refused(tmp_path: Path) -> None:
    a = write_tls(tmp_path / "a", hosts=["127.0.0.1"], days=1)
    b = write_tls(tmp_path / "b", hosts=["127.0.0.1"], days=1)
    with pytest.raises(DeployError, match="not issued by the CA"):
        check_server_tls(TLSFiles(b.ca_cert, b.ca_key, a.cert, a.key), host="127.0.0.1")
    with pytest.raises(DeployError, match="does not belong to the certificate"):
        check_server_tls(TLSFiles(a.ca_cert, a.ca_key, a.cert, b.key), host="127.0.0.1")


def test_device_key_is_p384_openssh(tmp_path: Path) -> None:
    key = make_device_key(tmp_path, "phone-1")
    private = serialization.load_ssh_private_key(key.private.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(key.public.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    assert key.private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.public.read_bytes().startswith(b"ecdsa-sha2-nistp384 ")
    assert public == private.public_key()
    assert _mode(key.private) == 0o600
    assert check_device_key(key.private).curve.name == "secp384r1"
    with pytest.raises(DeployError, match="already exists"):
        make_device_key(tmp_path, "phone-1")


def test_bad_device_keys_and_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="device name '../x'"):
        device_key_paths(tmp_path, "../x")
    with pytest.raises(DeployError, match="device authentication key file not found"):
        check_device_key(tmp_path / "none.key")
    ed = tmp_path / "ed.key"
    ed.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    with pytest.raises(DeployError, match="needs a NIST EC key"):
        check_device_key(ed)
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(DeployError, match="not an OpenSSH private key"):
        check_device_key(tmp_path / "junk.key")


def test_signing_key(tmp_path: Path) -> None:
    private, public = make_signing_key(tmp_path)
    key = load_signing_key(private)
    assert key.public_key() == serialization.load_pem_public_key(public.read_bytes())
    assert _mode(private) == 0o600
    with pytest.raises(DeployError, match="already exists"):
        make_signing_key(tmp_path)
    with pytest.raises(DeployError, match="expected an Ed25519 signing key"):
        other = tmp_path / "ec.key"
        other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        load_signing_key(other)


class _TLSServer:
    """A TLS listener on 127.0.0.1 presenting a given certificate (handshakes, then closes)."""

    def __init__(self, files: TLSFiles) -> None:
        import socket
        import ssl
        import threading

        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(files.cert, files.key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import ssl

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("case", ["expired", "wrong-name", "other-ca"])
def test_device_tls_probe_refuses(tmp_path: Path, case: str) -> None:
    from fedrec.deploy.tls import probe_tls

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10) if case == "expired" else None
    hosts = ["10.9.9.9"] if case == "wrong-name" else ["127.0.0.1"]
    served = write_tls(tmp_path / "s", hosts=hosts, days=2, not_before=past)
    trusted = write_tls(tmp_path / "o", hosts=["127.0.0.1"], days=2).ca_cert if case == "other-ca" else served.ca_cert
    server = _TLSServer(served)
    try:
        expected = {"expired": "certificate has expired", "wrong-name": "IP address mismatch",
                    "other-ca": "unable to get local issuer certificate"}[case]
        with pytest.raises(DeployError, match=f"server certificate refused with CA .*{expected}"):
            probe_tls("127.0.0.1", server.port, ca_file=trusted, timeout=5)
        good = write_tls(tmp_path / "g", hosts=["127.0.0.1"], days=2)
        ok_server = _TLSServer(good)
        try:
            probe_tls("127.0.0.1", ok_server.port, ca_file=good.ca_cert, timeout=5)
        finally:
            ok_server.close()
    finally:
        server.close()


def test_authority_and_device_identity_files(tmp_path: Path) -> None:
    private, public = make_authority(tmp_path / "authority")
    assert _mode(private) == 0o600 and _mode(tmp_path / "authority") == 0o700
    authority = load_authority(private)
    assert public.read_bytes() == authority.public_key
    folder = make_device_identity(tmp_path / "devices", "phone-1", authority)
    assert folder == tmp_path / "devices" / "phone-1.identity" and _mode(folder) == 0o700
    assert _mode(folder / IDENTITY_KEY_FILE) == 0o600
    identity = check_identity(folder)
    assert identity.certificate.verify(authority.public_key).public_bytes_raw() == identity.certificate.public_key
    with pytest.raises(DeployError, match="identity.pem: already exists"):
        make_device_identity(tmp_path / "devices", "phone-1", authority)
    with pytest.raises(DeployError, match="authority.key: already exists"):
        make_authority(tmp_path / "authority")
    assert load_authority(private).public_key == authority.public_key  # the refusal left it alone
    replaced = make_device_identity(tmp_path / "devices", "phone-1", authority, force=True)
    assert check_identity(replaced).certificate != identity.certificate


def test_bad_identity_material_is_refused(tmp_path: Path) -> None:
    authority = load_authority(make_authority(tmp_path / "a")[0])
    other = load_authority(make_authority(tmp_path / "b")[0])
    folder = make_device_identity(tmp_path, "d", authority)
    stranger = make_device_identity(tmp_path / "s", "d", other)
    (folder / CERTIFICATE_FILE).write_bytes((stranger / CERTIFICATE_FILE).read_bytes())  # cert of another authority
    with pytest.raises(DeployError, match="identity.cert.*signature does not verify"):
        check_identity(folder)
    (folder / AUTHORITY_FILE).write_bytes(other.public_key)  # consistent with the cert, not with the key
    with pytest.raises(DeployError, match="identity key does not match its certificate"):
        check_identity(folder)
    (folder / AUTHORITY_FILE).write_bytes(b"short")
    with pytest.raises(DeployError, match="authority.pub: authority key must be 32 raw bytes"):
        check_identity(folder)
    with pytest.raises(DeployError, match="identity folder not found"):
        check_identity(tmp_path / "missing")
    (tmp_path / "p256.key").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(DeployError, match="expected an Ed25519 enrolment authority key"):
        load_authority(tmp_path / "p256.key")
    with pytest.raises(DeployError, match="device name"):
        make_device_identity(tmp_path, "../escape", authority)
