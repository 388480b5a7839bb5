"""Reading typed values out of a flat run configuration, each error naming its key.

Every configuration section (:class:`~fedrec.data.spec.DataSpec`,
:class:`~fedrec.model.mf.MFConfig`, :class:`~fedrec.federated.server_state.FedConfig`
and the others) builds itself from the flat key space with a
``from_run_config`` classmethod; these readers are what they share, so a
wrong type or range reads the same way in every section (``model.dim:
expected int, got 'big'``). The module imports nothing but the error
hierarchy, so any section may use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedrec.errors import ConfigError

Flat = Mapping[str, Any]


def get(flat: Flat, key: str, kind: type) -> Any:
    """``flat[key]`` as ``kind``: an int is a float, a whole float an int, nothing else converts."""
    value = flat[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def integer(flat: Flat, key: str, *, low: int) -> int:
    """An integer key at least ``low``."""
    value = get(flat, key, int)
    if value < low:
        raise ConfigError(f"{key}: must be >= {low}, got {value}")
    return int(value)


def positive(flat: Flat, key: str) -> float:
    """A number key strictly above 0."""
    value = get(flat, key, float)
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")
    return float(value)


def choice(flat: Flat, key: str, choices: tuple[str, ...]) -> str:
    """A string key that is one of ``choices``."""
    value = get(flat, key, str)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    return str(value)
