"""fedrec: privacy-preserving federated recommendation.

Matrix factorization trained across devices: user factors and raw interactions
stay on the device; only masked (securely aggregated), optionally
differentially-private updates of the shared item table leave it.
"""

from __future__ import annotations

from pathlib import Path as _Path

# An installed wheel maps server/, client/ and simulations/ to fedrec.server,
# fedrec.client and fedrec.simulations. In a source checkout (this folder next to
# pyproject.toml, which is also how Flower loads the app: project folder first on
# sys.path) the same names resolve to the sibling folders, so code imports
# ``fedrec.server`` identically whether installed or not.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "server" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # noqa: F821

from fedrec.errors import (  # noqa: E402
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
