"""The fedrec error hierarchy.

Every failure the library reports on purpose is a :class:`FedRecError`, so an
application can catch one type. Sub-classes say which layer refused and why;
messages name the file, line, field or key involved and the rule broken.
"""

from __future__ import annotations


class FedRecError(Exception):
    """Base class of every error fedrec raises on purpose."""


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


class DeployError(FedRecError):
    """Deployment material or a deployed process is wrong: names the file, address or process and the rule."""
