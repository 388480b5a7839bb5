"""Device identities: Ed25519 keys certified by an enrolment authority, and signed key advertisements.

A device holds a long-lived Ed25519 identity key. An *enrolment authority*
(not the aggregation server) certifies it: a :class:`Certificate` binds the
device's enrolment id (``subject``) to its identity public key under the
authority's Ed25519 signature. The app ships the authority's public key (the
trust anchor). In every round a device signs its two fresh X25519 keys
(:func:`advert_statement`: round id, stage, protocol node id, both public keys,
its certificate); its peers check the certificate against the anchor and the
signature against the certified key before they share anything, so a server
that substitutes keys is refused.

Why our own certificate format and not X.509: a device verifies ``k``
certificates per round (dozens to hundreds) and every certificate travels in
each neighbour's key message. This one is a fixed 108 bytes (X.509 with
Ed25519 is about 300-600 bytes of DER), needs no ASN.1 parser on the device,
has no optional fields or extensions to misread, and its layout is pinned by a
known-answer test. It is built only from ``cryptography``'s Ed25519.
Expiry and revocation are the authority's business (rotate the anchor); they
are out of scope here.

Layouts (all integers big-endian)::

    certificate  = b"FRC1" || subject u64 || identity public key (32) || signature (64)
                   signature by the authority over
                   b"fedrec-secagg certificate v1\\0" || subject u64 || identity public key
    advertisement statement (signed by the identity key) =
                   b"fedrec-secagg advertise v1\\0" || round u64 || stage u8 (1)
                   || node u64 || c_pk (32) || s_pk (32) || setup digest (32) || certificate (108)

The setup digest (:func:`fedrec.secagg.messages.setup_digest`) makes the
signature cover the round's rules as the signer saw them: a server that sends
different participant lists, thresholds, degrees or nonces to different
devices gets advertisements that their peers refuse.

In simulation :class:`SimulationAuthority` plays the enrolment authority: it
derives each device's identity key and certificate lazily from a run secret
(HKDF per enrolment id, one signature), so a million devices cost nothing
until they take part. A deployment reads identities from files
(:func:`load_identity`, written by :func:`save_identity`).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrec.errors import SecAggConfigError, SecAggIntegrityError, SecAggMessageError
from fedrec.store.atomic import atomic_write_bytes

__all__ = [
    "CERTIFICATE_BYTES",
    "SIGNATURE_BYTES",
    "STAGE_ADVERTISE",
    "Authority",
    "Certificate",
    "DeviceIdentity",
    "SimulationAuthority",
    "AUTHORITY_FILE",
    "CERTIFICATE_FILE",
    "IDENTITY_KEY_FILE",
    "advert_digest",
    "advert_statement",
    "load_authority_key",
    "load_identity",
    "save_identity",
    "verify_advert",
]

PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
STAGE_ADVERTISE = 1
"""Protocol stage number bound into the advertisement signature."""

_CERT_MAGIC = b"FRC1"
_CERT_TAG = b"fedrec-secagg certificate v1\x00"
_ADVERT_TAG = b"fedrec-secagg advertise v1\x00"
_U64 = struct.Struct(">Q")
_ADVERT_HEAD = struct.Struct(">QBQ")
CERTIFICATE_BYTES = len(_CERT_MAGIC) + _U64.size + PUBLIC_BYTES + SIGNATURE_BYTES
"""Exact length of a serialized :class:`Certificate` (108)."""

_SIM_AUTHORITY_INFO = b"fedrec-secagg simulation authority v1"
_SIM_DEVICE_INFO = b"fedrec-secagg simulation device v1|"


def _check_u64(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise SecAggMessageError(f"{name} {value!r} is not an int in [0, 2^64)")
    return value


def _public(raw: bytes, what: str) -> Ed25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != PUBLIC_BYTES:
        raise SecAggMessageError(f"{what} must be {PUBLIC_BYTES} raw bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SecAggIntegrityError(f"{what} is not a valid Ed25519 public key") from None


def _verify(public: Ed25519PublicKey, signature: bytes, message: bytes, what: str) -> None:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise SecAggIntegrityError(f"{what}: signature does not verify") from None


@dataclass(frozen=True)
class Certificate:
    """The authority's statement "enrolment id ``subject`` owns identity key ``public_key``"."""

    subject: int
    public_key: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_u64("certificate subject", self.subject)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_BYTES:
            raise SecAggMessageError(f"certificate public key must be {PUBLIC_BYTES} bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise SecAggMessageError(f"certificate signature must be {SIGNATURE_BYTES} bytes")

    @staticmethod
    def statement(subject: int, public_key: bytes) -> bytes:
        """The bytes the authority signs."""
        return _CERT_TAG + _U64.pack(subject) + public_key

    def to_bytes(self) -> bytes:
        """The 108-byte wire form."""
        return _CERT_MAGIC + _U64.pack(self.subject) + self.public_key + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Certificate:
        """Parse the wire form (the signature is not checked here: :meth:`verify`)."""
        if not isinstance(data, bytes) or len(data) != CERTIFICATE_BYTES or not data.startswith(_CERT_MAGIC):
            raise SecAggMessageError(f"certificate must be {CERTIFICATE_BYTES} bytes starting with {_CERT_MAGIC!r}")
        at = len(_CERT_MAGIC)
        (subject,) = _U64.unpack_from(data, at)
        at += _U64.size
        return cls(subject, data[at : at + PUBLIC_BYTES], data[at + PUBLIC_BYTES :])

    def verify(self, authority_key: bytes) -> Ed25519PublicKey:
        """Check the authority's signature; returns the certified identity key.

        Raises
        ------
        SecAggIntegrityError
            The certificate was not issued by the authority holding ``authority_key``.
        """
        anchor = _public(authority_key, "authority key")
        _verify(anchor, self.signature, self.statement(self.subject, self.public_key),
                f"certificate of enrolment id {self.subject}")
        return _public(self.public_key, f"identity key of enrolment id {self.subject}")


class Authority:
    """An enrolment authority: an Ed25519 key that certifies device identity keys."""

    __slots__ = ("_private", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Authority:
        """A fresh authority key from the OS CSPRNG."""
        return cls(Ed25519PrivateKey.generate())

    def issue(self, subject: int, public_key: bytes) -> Certificate:
        """Certify ``public_key`` as enrolment id ``subject``."""
        _check_u64("subject", subject)
        _public(public_key, "identity key")
        return Certificate(subject, public_key, self._private.sign(Certificate.statement(subject, public_key)))

    def enrol(self, subject: int) -> DeviceIdentity:
        """A fresh identity key for ``subject``, certified (tests, and the CLI that writes files)."""
        key = Ed25519PrivateKey.generate()
        return DeviceIdentity(key, self.issue(subject, key.public_key().public_bytes_raw()))

    def __repr__(self) -> str:
        return f"Authority(public_key={self.public_key.hex()[:16]}..., private=<redacted>)"


class DeviceIdentity:
    """A device's identity key and its certificate; signs the device's key advertisements."""

    __slots__ = ("_private", "certificate")

    def __init__(self, private: Ed25519PrivateKey, certificate: Certificate) -> None:
        if private.public_key().public_bytes_raw() != certificate.public_key:
            raise SecAggConfigError("identity key does not match its certificate")
        self._private = private
        self.certificate = certificate

    def sign_advert(self, *, round_id: int, node_id: int, c_pk: bytes, s_pk: bytes, setup_digest: bytes) -> bytes:
        """Signature over :func:`advert_statement` for this device's certificate."""
        return self._private.sign(advert_statement(
            round_id=round_id, node_id=node_id, c_pk=c_pk, s_pk=s_pk, setup_digest=setup_digest,
            certificate=self.certificate.to_bytes()))

    def private_bytes(self) -> bytes:
        """Raw private key (to store it on the device)."""
        return self._private.private_bytes_raw()

    def __repr__(self) -> str:
        return f"DeviceIdentity(subject={self.certificate.subject}, private=<redacted>)"


def advert_statement(
    *, round_id: int, node_id: int, c_pk: bytes, s_pk: bytes, setup_digest: bytes, certificate: bytes
) -> bytes:
    """The bytes a device signs when it advertises its round keys (layout in the module docstring)."""
    _check_u64("round id", round_id)
    _check_u64("node id", node_id)
    if not isinstance(setup_digest, bytes) or len(setup_digest) != 32:
        raise SecAggMessageError("setup digest must be 32 bytes")
    return (_ADVERT_TAG + _ADVERT_HEAD.pack(round_id, STAGE_ADVERTISE, node_id) + c_pk + s_pk + setup_digest
            + certificate)


def advert_digest(statement: bytes, signature: bytes) -> bytes:
    """SHA-256 of a signed advertisement; the graph seed hashes these (:func:`fedrec.secagg.graph.graph_seed`)."""
    return hashlib.sha256(statement + signature).digest()


def verify_advert(
    *, authority_key: bytes, round_id: int, node_id: int, c_pk: bytes, s_pk: bytes, setup_digest: bytes,
    certificate: bytes, signature: bytes,
) -> Certificate:
    """Check one peer's advertisement: certificate under the anchor, signature under the certified key.

    Returns the certificate (its ``subject`` names the enrolled device).

    Raises
    ------
    SecAggIntegrityError
        A certificate not issued by the authority, or a signature that does
        not cover exactly these round, node, keys and setup (substituted keys,
        or a setup this device saw differently).
    SecAggMessageError
        Malformed certificate or signature bytes.
    """
    cert = Certificate.from_bytes(certificate)
    identity = cert.verify(authority_key)
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise SecAggMessageError(f"advertisement signature must be {SIGNATURE_BYTES} bytes")
    statement = advert_statement(round_id=round_id, node_id=node_id, c_pk=c_pk, s_pk=s_pk,
                                 setup_digest=setup_digest, certificate=certificate)
    _verify(identity, signature, statement, f"advertisement of node {node_id} (round {round_id})")
    return cert


class SimulationAuthority:
    """The enrolment authority of a simulation: identities derived lazily from a run secret.

    ``identity(enrolment_id)`` costs one HKDF and one Ed25519 signature, so a
    million devices are enrolled only as they take part. The secret stays with
    the simulation's device side (the ClientApp); the server never holds it.
    Pickles as its 32-byte secret (Flower ships the ClientApp to workers).
    """

    __slots__ = ("_authority", "_secret")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < 32:
            raise SecAggConfigError("simulation authority secret must be at least 32 bytes")
        self._secret = secret
        self._authority = Authority(Ed25519PrivateKey.from_private_bytes(_derive(secret, _SIM_AUTHORITY_INFO)))

    @classmethod
    def generate(cls) -> SimulationAuthority:
        """A fresh run secret from the OS CSPRNG."""
        return cls(os.urandom(32))

    @property
    def public_key(self) -> bytes:
        """The trust anchor devices check certificates against."""
        return self._authority.public_key

    def identity(self, enrolment_id: int) -> DeviceIdentity:
        """Device ``enrolment_id``'s identity (the same every call)."""
        _check_u64("enrolment id", enrolment_id)
        key = Ed25519PrivateKey.from_private_bytes(_derive(self._secret, _SIM_DEVICE_INFO + _U64.pack(enrolment_id)))
        return DeviceIdentity(key, self._authority.issue(enrolment_id, key.public_key().public_bytes_raw()))

    def __reduce__(self) -> tuple[type[SimulationAuthority], tuple[bytes]]:
        return (SimulationAuthority, (self._secret,))

    def __repr__(self) -> str:
        return f"SimulationAuthority(public_key={self.public_key.hex()[:16]}..., secret=<redacted>)"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


# -- files ------------------------------------------------------------------

IDENTITY_KEY_FILE = "identity.pem"
CERTIFICATE_FILE = "identity.cert"
AUTHORITY_FILE = "authority.pub"


def save_identity(directory: str | Path, identity: DeviceIdentity, *, authority_key: bytes) -> None:
    """Write ``identity.pem`` (PKCS#8, unencrypted, mode 0600), ``identity.cert`` and ``authority.pub``.

    Files are written atomically (temporary file, then rename).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.from_private_bytes(identity.private_bytes()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write_bytes(folder / IDENTITY_KEY_FILE, pem)
    os.chmod(folder / IDENTITY_KEY_FILE, 0o600)
    atomic_write_bytes(folder / CERTIFICATE_FILE, identity.certificate.to_bytes())
    atomic_write_bytes(folder / AUTHORITY_FILE, authority_key)


def load_identity(
    key_path: str | Path, cert_path: str | Path, authority_path: str | Path
) -> tuple[DeviceIdentity, bytes]:
    """A deployed device's identity and the trust anchor, from the three files :func:`save_identity` writes.

    The certificate is checked against the anchor and the key against the
    certificate, so a device never starts with an identity its peers would refuse.

    Raises
    ------
    SecAggConfigError
        A file is missing or unreadable, naming it and the rule broken.
    """
    key_file, cert_file = Path(key_path), Path(cert_path)
    anchor = load_authority_key(authority_path)
    try:
        private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecAggConfigError(f"{key_file}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SecAggConfigError(f"{key_file}: not an Ed25519 private key")
    try:
        cert = Certificate.from_bytes(cert_file.read_bytes())
        cert.verify(anchor)
        return DeviceIdentity(private, cert), anchor
    except OSError as exc:
        raise SecAggConfigError(f"{cert_file}: cannot read ({exc.strerror})") from None
    except (SecAggMessageError, SecAggIntegrityError, SecAggConfigError) as exc:
        raise SecAggConfigError(f"{cert_file}: {exc}") from None


def load_authority_key(path: str | Path) -> bytes:
    """The 32 raw bytes of the enrolment authority's Ed25519 public key (the trust anchor).

    Raises
    ------
    SecAggConfigError
        The file is missing or is not 32 bytes holding a valid key.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise SecAggConfigError(f"{file}: cannot read ({exc.strerror})") from None
    try:
        _public(raw, "authority key")
    except (SecAggMessageError, SecAggIntegrityError) as exc:
        raise SecAggConfigError(f"{file}: {exc}") from None
    return raw
