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

from fedrec.privacy.accounting import PrivacyAccountant, epsilon_of, opacus_accountant
from fedrec.privacy.budget import PrivacyBudget
from fedrec.privacy.calibration import (
    LocalSchedule,
    local_schedule,
    noise_multiplier_for,
    rating_level_noise_multiplier,
)
from fedrec.privacy.clipping import clip_update, global_l2_norm
from fedrec.privacy.config import DPConfig
from fedrec.privacy.local_dp import (
    DPLocalResult,
    LocalResult,
    dp_local_train,
    local_train,
    untouched_row_noise_std,
)
from fedrec.privacy.noise import (
    add_noise,
    central_noise_std,
    distributed_noise_std,
    gaussian_noise,
)

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
