"""Differential privacy for fedrec: accounting, calibration, clipping, noise, DP-SGD.

* :mod:`~fedrec.privacy.config` — the validated ``dp.*`` run-config section.
* :mod:`~fedrec.privacy.accounting` — spent-budget history over Opacus accountants.
* :mod:`~fedrec.privacy.budget` — a cap that refuses an over-budget step.
* :mod:`~fedrec.privacy.calibration` — noise multiplier for a target epsilon.
* :mod:`~fedrec.privacy.clipping`, :mod:`~fedrec.privacy.noise` — user-level DP
  (joint L2 clip of an update; central or distributed Gaussian noise).
* :mod:`~fedrec.privacy.local_dp` — rating-level DP-SGD on a device.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve lazily: importing fedrec.privacy (e.g. for DPConfig) must not load
# Opacus and torch on devices that never train with DP-SGD.
_EXPORTS: dict[str, str] = {
    "DPConfig": "fedrec.privacy.config",
    "DPLocalResult": "fedrec.privacy.local_dp",
    "LocalResult": "fedrec.privacy.local_dp",
    "LocalSchedule": "fedrec.privacy.calibration",
    "PrivacyAccountant": "fedrec.privacy.accounting",
    "PrivacyBudget": "fedrec.privacy.budget",
    "add_noise": "fedrec.privacy.noise",
    "central_noise_std": "fedrec.privacy.noise",
    "clip_update": "fedrec.privacy.clipping",
    "distributed_noise_std": "fedrec.privacy.noise",
    "dp_local_train": "fedrec.privacy.local_dp",
    "epsilon_of": "fedrec.privacy.accounting",
    "gaussian_noise": "fedrec.privacy.noise",
    "global_l2_norm": "fedrec.privacy.clipping",
    "local_schedule": "fedrec.privacy.calibration",
    "local_train": "fedrec.privacy.local_dp",
    "noise_multiplier_for": "fedrec.privacy.calibration",
    "opacus_accountant": "fedrec.privacy.accounting",
    "rating_level_noise_multiplier": "fedrec.privacy.calibration",
    "untouched_row_noise_std": "fedrec.privacy.local_dp"
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DPConfig",
    "DPLocalResult",
    "LocalResult",
    "LocalSchedule",
    "PrivacyAccountant",
    "PrivacyBudget",
    "add_noise",
    "central_noise_std",
    "clip_update",
    "distributed_noise_std",
    "dp_local_train",
    "epsilon_of",
    "gaussian_noise",
    "global_l2_norm",
    "local_schedule",
    "local_train",
    "noise_multiplier_for",
    "opacus_accountant",
    "rating_level_noise_multiplier",
    "untouched_row_noise_std",
]
