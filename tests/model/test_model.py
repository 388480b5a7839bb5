"""Parameter groups, shapes, configs and scoring."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import ConfigError, ModelError
from fedrec.model.mf import MFConfig, MFModel, score_items
from fedrec.model.params import GlobalParams, LocalParams, ParamGroup, UserTable


def test_groups_are_first_class() -> None:
    assert GlobalParams.group is ParamGroup.GLOBAL and LocalParams.group is ParamGroup.LOCAL
    assert set(GlobalParams.init(5, 3).arrays()) == {"item_factors", "item_bias"}


def test_global_params_validate_shapes_and_values() -> None:
    with pytest.raises(ModelError, match="do not match"):
        GlobalParams(np.zeros((4, 2), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ModelError, match="non-finite"):
        GlobalParams(np.full((2, 2), np.nan, np.float32), np.zeros(2, np.float32))
    with pytest.raises(ModelError, match="missing array"):
        GlobalParams.from_arrays({"item_bias": np.zeros(2)}, 0.0)


def test_local_and_user_table_validate() -> None:
    with pytest.raises(ModelError):
        LocalParams(np.zeros((2, 2), np.float32))
    with pytest.raises(ModelError):
        UserTable(np.zeros((3, 2), np.float32), np.zeros(2, np.float32))


@pytest.mark.parametrize("field,value", [("kind", "other"), ("dim", 0), ("reg", -1.0), ("negatives", 0),
                                         ("loss", "hinge")])
def test_config_rejects_bad_values_naming_the_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"model.{field.replace('_', '-')}"):
        MFConfig(**{field: value})  # type: ignore[arg-type]


def test_scoring_rule_is_shared_by_device_and_model() -> None:
    rng = np.random.default_rng(0)
    glob = GlobalParams(rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=6).astype(np.float32), 3.0)
    users = UserTable(rng.normal(size=(2, 3)).astype(np.float32), np.array([0.5, -0.2], np.float32))
    model = MFModel(MFConfig(dim=3, reg=0.1, bias_reg=0.1), glob, users)
    np.testing.assert_allclose(model.score_block(np.array([1]))[0], score_items(glob, users.local(1)), rtol=1e-6)
    np.testing.assert_allclose(model.predict(np.array([1, 1]), np.array([2, 4])),
                               score_items(glob, users.local(1))[[2, 4]], rtol=1e-6)
