"""fedrec: privacy-preserving federated recommendation.

Matrix factorization trained across devices: user factors and raw interactions
stay on the device; only masked (securely aggregated), optionally
differentially-private updates of the shared item table leave it.
"""

from __future__ import annotations

from fedrec.errors import (
    BudgetExhaustedError,
    CheckpointError,
    ConfigError,
    DataError,
    FedRecError,
    ModelError,
    PrivacyError,
    SecAggAbort,
    SecAggError,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetExhaustedError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FedRecError",
    "ModelError",
    "PrivacyError",
    "SecAggAbort",
    "SecAggError",
    "__version__",
]
