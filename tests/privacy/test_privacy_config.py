"""DPConfig validation: every bad value is refused with its run-config key."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fedrec.errors import ConfigError
from fedrec.privacy.config import DPConfig


def test_defaults_are_dp_off() -> None:
    cfg = DPConfig()
    assert not cfg.enabled


def test_valid_rating_and_user_configs() -> None:
    assert DPConfig(unit="rating", epsilon=math.inf).enabled
    cfg = DPConfig(unit="user", noise_multiplier=1.0, clip=0.5, noise="distributed",
                   cohort_rate=0.1, accountant="prv")
    assert cfg.noise == "distributed"


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DPConfig().unit = "user"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"unit": "item"}, "dp.unit"),
        ({"unit": "rating", "epsilon": 0.0}, "dp.epsilon"),
        ({"unit": "rating", "epsilon": -1.0}, "dp.epsilon"),
        ({"unit": "rating", "epsilon": math.nan}, "dp.epsilon"),
        ({"unit": "rating", "epsilon": 1.0, "delta": 0.0}, "dp.delta"),
        ({"unit": "rating", "epsilon": 1.0, "delta": 1.0}, "dp.delta"),
        ({"unit": "rating", "noise_multiplier": -0.5}, "dp.noise-multiplier"),
        ({"unit": "rating", "noise_multiplier": math.inf}, "dp.noise-multiplier"),
        ({"unit": "rating", "epsilon": 1.0, "clip": 0.0}, "dp.clip"),
        ({"unit": "rating", "epsilon": 1.0, "clip": math.inf}, "dp.clip"),
        ({"unit": "user", "epsilon": 1.0, "noise": "local"}, "dp.noise"),
        ({"unit": "user", "epsilon": 1.0, "cohort_rate": 0.0}, "dp.cohort-rate"),
        ({"unit": "user", "epsilon": 1.0, "cohort_rate": 1.5}, "dp.cohort-rate"),
        ({"unit": "user", "epsilon": 1.0, "accountant": "moments"}, "dp.accountant"),
        ({"unit": "user", "epsilon": 1.0, "secure_mode": "yes"}, "dp.secure-mode"),
        ({"unit": "user"}, "dp.epsilon"),
        ({"unit": "user", "epsilon": 1.0, "noise_multiplier": 1.0}, "dp.noise-multiplier"),
    ],
)
def test_bad_values_name_their_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DPConfig(**kwargs)


def test_from_run_config_reads_kebab_case_keys() -> None:
    cfg = DPConfig.from_run_config({
        "dp.unit": "user", "dp.epsilon": "inf", "dp.delta": 1e-6, "dp.clip": 2,
        "dp.noise": "distributed", "dp.cohort-rate": 0.05, "dp.accountant": "rdp",
        "dp.secure-mode": False, "num-server-rounds": 10,
    })
    assert cfg.epsilon == math.inf and cfg.clip == 2.0 and cfg.cohort_rate == 0.05
    assert DPConfig.from_run_config(cfg.to_run_config()) == cfg


@pytest.mark.parametrize(
    ("run_config", "key"),
    [
        ({"dp.epsilion": 1.0}, "dp.epsilion"),
        ({"dp.unit": "user", "dp.noise-multiplier": "lots"}, "dp.noise-multiplier"),
        ({"dp.unit": 3}, "dp.unit"),
        ({"dp.clip": True}, "dp.clip"),
        ({"dp.secure-mode": 1}, "dp.secure-mode"),
    ],
)
def test_from_run_config_names_bad_keys(run_config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DPConfig.from_run_config(run_config)
