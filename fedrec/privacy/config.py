"""The differential-privacy section of a run configuration.

A run configuration is flat: Flower flattens ``[tool.flwr.app.config]`` tables
into dotted keys, so the DP settings arrive as ``dp.unit``, ``dp.epsilon``,
``dp.noise-multiplier`` and so on. :class:`DPConfig` holds them with Python
names and validates them once, so every layer below can trust the values; each
error names the run-config key so a user can find the line to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from fedrec.errors import ConfigError

Unit = Literal["off", "rating", "user"]
NoiseMode = Literal["central", "distributed"]
AccountantKind = Literal["rdp", "prv", "gdp"]

UNITS: tuple[str, ...] = ("off", "rating", "user")
NOISE_MODES: tuple[str, ...] = ("central", "distributed")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "gdp")

PREFIX = "dp."

#: Python field name -> run-config key.
RUN_CONFIG_KEYS: dict[str, str] = {
    "unit": "dp.unit",
    "epsilon": "dp.epsilon",
    "delta": "dp.delta",
    "noise_multiplier": "dp.noise-multiplier",
    "clip": "dp.clip",
    "noise": "dp.noise",
    "cohort_rate": "dp.cohort-rate",
    "accountant": "dp.accountant",
    "secure_mode": "dp.secure-mode",
}


@dataclass(frozen=True)
class DPConfig:
    """Validated differential-privacy settings of one run.

    Parameters
    ----------
    unit
        What one privacy "record" is: ``"off"`` (no DP), ``"rating"`` (one
        rating of a user, noise added on the device by DP-SGD) or ``"user"``
        (a user's whole update, clipped on the device, noised centrally or
        distributedly).
    epsilon
        Target epsilon for the whole run; ``math.inf`` means no noise. Exactly
        one of ``epsilon`` and ``noise_multiplier`` is set when DP is on, so the
        noise level is never ambiguous.
    delta
        Target delta, in ``(0, 1)``.
    noise_multiplier
        Noise standard deviation in units of the clip bound, the alternative
        to ``epsilon`` when the noise level is fixed and epsilon is reported.
    clip
        L2 clip bound: per rating gradient (``"rating"``) or per user update
        (``"user"``).
    noise
        ``"central"`` (the server adds all the noise to the sum) or
        ``"distributed"`` (each client adds a share so that the secure
        aggregate carries the full noise without a trusted server).
    cohort_rate
        Fraction of users sampled per round; the sampling rate of user-level
        accounting.
    accountant
        Opacus accountant: ``"rdp"``, ``"prv"`` or ``"gdp"``.
    secure_mode
        Ask Opacus for cryptographically secure noise (needs ``torchcsprng``).
    """

    unit: Unit = "off"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float = 1.0
    noise: NoiseMode = "central"
    cohort_rate: float = 1.0
    accountant: AccountantKind = "rdp"
    secure_mode: bool = False

    def __post_init__(self) -> None:
        _check_choice("unit", self.unit, UNITS)
        _check_choice("noise", self.noise, NOISE_MODES)
        _check_choice("accountant", self.accountant, ACCOUNTANTS)
        _check_epsilon(self.epsilon)
        _check_open_unit("delta", self.delta)
        _check_noise_multiplier(self.noise_multiplier)
        _check_positive_finite("clip", self.clip)
        _check_rate("cohort_rate", self.cohort_rate)
        if not isinstance(self.secure_mode, bool):
            raise ConfigError(f"{RUN_CONFIG_KEYS['secure_mode']}: must be a boolean")
        if self.enabled:
            self._check_noise_level_given_once()

    @property
    def enabled(self) -> bool:
        """True when a privacy unit is chosen, i.e. noise and accounting apply."""
        return self.unit != "off"

    def _check_noise_level_given_once(self) -> None:
        has_eps = self.epsilon is not None
        has_sigma = self.noise_multiplier is not None
        if has_eps == has_sigma:
            which = "both are" if has_eps else "neither is"
            raise ConfigError(
                f"{RUN_CONFIG_KEYS['epsilon']} / {RUN_CONFIG_KEYS['noise_multiplier']}: "
                f"exactly one must be set when {RUN_CONFIG_KEYS['unit']}={self.unit!r}, "
                f"but {which} set"
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> DPConfig:
        """Build from a flat Flower run config, reading only the ``dp.*`` keys.

        Unknown ``dp.*`` keys are rejected rather than ignored: a misspelt
        privacy key silently falling back to a default could disable noise.
        """
        known = {key: name for name, key in RUN_CONFIG_KEYS.items()}
        kwargs: dict[str, object] = {}
        for key, value in run_config.items():
            if not key.startswith(PREFIX):
                continue
            if key not in known:
                raise ConfigError(
                    f"{key}: unknown privacy key; expected one of {sorted(known)}"
                )
            kwargs[known[key]] = _coerce(known[key], value)
        return cls(**cast(dict[str, Any], kwargs))

    def to_run_config(self) -> dict[str, object]:
        """The flat ``dp.*`` mapping this config was (or could have been) read from."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[RUN_CONFIG_KEYS[f.name]] = value
        return out


def _coerce(name: str, value: object) -> object:
    """Turn run-config scalars into field types; TOML gives ints for whole floats."""
    key = RUN_CONFIG_KEYS[name]
    if name in ("unit", "noise", "accountant"):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    if name == "secure_mode":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be a boolean, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
    raise ConfigError(f"{key}: must be a number, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{RUN_CONFIG_KEYS[name]}: must be one of {choices}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_epsilon(value: float | None) -> None:
    if value is None:
        return
    if not _is_number(value) or math.isnan(value) or value <= 0:
        raise ConfigError(
            f"{RUN_CONFIG_KEYS['epsilon']}: must be > 0 (inf allowed), got {value!r}"
        )


def _check_open_unit(name: str, value: float) -> None:
    if not _is_number(value) or not 0.0 < value < 1.0:
        raise ConfigError(f"{RUN_CONFIG_KEYS[name]}: must be in (0, 1), got {value!r}")


def _check_rate(name: str, value: float) -> None:
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{RUN_CONFIG_KEYS[name]}: must be in (0, 1], got {value!r}")


def _check_positive_finite(name: str, value: float) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{RUN_CONFIG_KEYS[name]}: must be finite and > 0, got {value!r}")


def _check_noise_multiplier(value: float | None) -> None:
    if value is None:
        return
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{RUN_CONFIG_KEYS['noise_multiplier']}: must be finite and >= 0, got {value!r}"
        )
