"""TLS material for the SuperLink: a private CA and a server certificate, made with ``cryptography``.

Why our own CA: devices are provisioned with ``ca.pem`` and trust exactly this
server, not the public web PKI. The server certificate carries every address
devices and the operator use as a subject alternative name (DNS names and IP
addresses; gRPC/HTTP clients check SANs, never the common name). Keys are
ECDSA P-256 (what every TLS stack accepts); private keys are written ``0600``.

:func:`check_server_tls` runs before ``flower-superlink`` starts, so a missing
file, an expired certificate, a certificate not issued by the CA, a key that
does not belong to the certificate or a name that is not among the SANs is one
clear error instead of a TLS handshake failure on every device.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrec.errors import DeployError

from .files import read_file, refuse_existing, write_file

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"


@dataclass(frozen=True)
class TLSFiles:
    """Where the four TLS files of a state folder live."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @classmethod
    def under(cls, folder: Path) -> TLSFiles:
        return cls(folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(*, name: str, days: int, not_before: dt.datetime | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate (path length 0: it signs server certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, hosts: list[str],
                     days: int, not_before: dt.datetime | None = None
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate issued by ``ca_cert`` whose SANs are ``hosts`` (names or IP addresses)."""
    if not hosts:
        raise DeployError("tls: at least one --host (a DNS name or IP address devices connect to) is required")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_tls(folder: Path, *, hosts: list[str], days: int, force: bool = False, ca_name: str = "fedrec CA",
              not_before: dt.datetime | None = None) -> TLSFiles:
    """Create a CA and a server certificate for ``hosts`` in ``folder``; refuse to overwrite without ``force``."""
    if days < 1:
        raise DeployError(f"tls: --days must be >= 1, got {days}")
    files = TLSFiles.under(Path(folder))
    refuse_existing([files.ca_cert, files.ca_key, files.cert, files.key], force=force)
    ca_key, ca_cert = make_ca(name=ca_name, days=days, not_before=not_before)
    key, cert = make_server_cert(ca_key, ca_cert, hosts=hosts, days=days, not_before=not_before)
    write_file(files.ca_key, _pem_key(ca_key), private=True)
    write_file(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    write_file(files.key, _pem_key(key), private=True)
    write_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return files


def load_cert(path: Path, *, what: str = "certificate") -> x509.Certificate:
    """A PEM certificate; a missing or malformed file is an error naming it."""
    try:
        return x509.load_pem_x509_certificate(read_file(path, what=what))
    except ValueError as exc:
        raise DeployError(f"{path}: not a PEM {what}: {exc}") from exc


def sans(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.DNSName), *(str(a) for a in ext.get_values_for_type(x509.IPAddress))]


def check_server_tls(files: TLSFiles, *, host: str, now: dt.datetime | None = None) -> x509.Certificate:
    """Refuse a server certificate devices would reject: checked before the SuperLink starts.

    Raises
    ------
    DeployError
        A missing or malformed file, a certificate outside its validity
        period, one not issued by the CA, a key not matching it, or ``host``
        not among its subject alternative names.
    """
    ca = load_cert(files.ca_cert, what="CA certificate")
    cert = load_cert(files.cert, what="server certificate")
    try:
        key = serialization.load_pem_private_key(read_file(files.key, what="server key"), password=None)
    except ValueError as exc:
        raise DeployError(f"{files.key}: not a PEM private key: {exc}") from exc
    check_validity(cert, files.cert, now=now)
    check_validity(ca, files.ca_cert, now=now)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise DeployError(f"{files.cert}: not issued by the CA in {files.ca_cert}") from exc
    if key.public_key() != cert.public_key():
        raise DeployError(f"{files.key}: does not belong to the certificate {files.cert}")
    names = sans(cert)
    if not _matches(host, names):
        raise DeployError(f"{files.cert}: valid for {names}, not for {host!r} (make it again with "
                          f"'fedrec server tls --host {host} ...')")
    return cert


def check_validity(cert: x509.Certificate, path: Path, *, now: dt.datetime | None = None) -> None:
    """Raise if ``now`` is outside the certificate's validity period."""
    t = now or _now()
    if t < cert.not_valid_before_utc:
        raise DeployError(f"{path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    if t > cert.not_valid_after_utc:
        raise DeployError(f"{path}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")


def _matches(host: str, names: list[str]) -> bool:
    """Exact match (IP addresses compared as addresses); wildcards are never issued here."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in (n.lower() for n in names)
    return any(_is_ip(n) and ipaddress.ip_address(n) == addr for n in names)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def probe_tls(host: str, port: int, *, ca_file: Path, timeout: float) -> None:
    """Connect to ``host:port`` and verify its certificate against ``ca_file`` only (chain, dates, name).

    A device runs this before starting its SuperNode: a server it does not
    trust, an expired certificate or a name missing from the SANs is one clear
    error rather than endless reconnection attempts. Waits up to ``timeout``
    for the port to open.
    """
    load_cert(ca_file, what="CA certificate")
    context = ssl.create_default_context(cafile=str(ca_file))  # trusts this CA only, not the system store
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=5.0) as sock, \
                    context.wrap_socket(sock, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as exc:
            raise DeployError(f"{host}:{port}: server certificate refused with CA {ca_file}: "
                              f"{exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise DeployError(f"{host}:{port}: TLS handshake failed: {exc.reason}") from exc
        except OSError as exc:
            if time.monotonic() > deadline:
                raise DeployError(f"{host}:{port}: no SuperLink answered within {timeout:.0f}s "
                                  f"({exc.strerror or exc})") from exc
            time.sleep(0.5)
