"""The fedrec error hierarchy.

Every failure the library reports on purpose is a :class:`FedRecError`, so an
application can catch one type. Sub-classes say which layer refused and why;
messages name the file, line, field or key involved and the rule broken.
"""

from __future__ import annotations


class FedRecError(Exception):
    """Base class of every error fedrec raises on purpose."""


class PayloadError(FedRecError):
    """An array payload that is not a well-formed ``.npy`` buffer of a plain (non-object) dtype."""


class DataError(FedRecError):
    """Input data is malformed: names the file, the line and the rule broken."""


class ConfigError(FedRecError):
    """A configuration value is invalid: names the key and the rule broken."""


class ModelError(FedRecError):
    """Model parameters do not fit together (shapes, groups, dtypes)."""


class CheckpointError(FedRecError):
    """A checkpoint or store file cannot be written or read back intact."""


class SignatureError(FedRecError):
    """A signed artifact (a model export) does not verify: wrong key, tampered bytes, bad format."""


class RollbackError(SignatureError):
    """A validly signed model is older than the one the device already holds."""


class PrivacyError(FedRecError):
    """A differential-privacy parameter or accounting step is invalid."""


class BudgetExhaustedError(PrivacyError):
    """The privacy budget would be exceeded by one more step."""


class SecAggError(FedRecError):
    """A secure-aggregation message or step was rejected (never silently)."""


class SecAggAbort(SecAggError):
    """A secure-aggregation round cannot complete (too few survivors)."""


class SecAggConfigError(SecAggError):
    """Round settings cannot work (threshold, graph degree, ring too small)."""


class SecAggMessageError(SecAggError):
    """A message is malformed: wrong type, length, dtype, id or value range."""


class SecAggStateError(SecAggMessageError):
    """Stored secure-aggregation state is missing, inconsistent or from another layout."""


class SecAggIntegrityError(SecAggError):
    """A ciphertext, signature, certificate or share failed verification (tampered,
    replayed, misrouted, substituted or inconsistent)."""


class SecAggProtocolError(SecAggError):
    """A request an honest party refuses: out of order, inconsistent or repeated."""


class SecAggSecurityError(SecAggConfigError):
    """Round parameters below the security bound a device requires (degree, threshold,
    population): the device refuses rather than run a round that would not protect it."""


class SecAggInconsistentShareError(SecAggIntegrityError):
    """Shares of one secret do not lie on one polynomial; ``holder`` names the node whose
    share disagrees with the others (``None`` when no single holder explains it)."""

    def __init__(self, message: str, *, owner: int, holder: int | None) -> None:
        super().__init__(message)
        self.owner = owner
        self.holder = holder


class StoreError(CheckpointError):
    """The on-device store cannot be opened or read back intact (names the file)."""


class StoreKeyError(StoreError):
    """The key or passphrase does not open this store (its key-check record does not decrypt)."""


class StoreCorruptError(StoreError):
    """The store file is truncated, tampered with or not a fedrec store; it is never silently reset."""


class DeployError(FedRecError):
    """Deployment material or a deployed process is wrong: names the file, address or process and the rule."""
