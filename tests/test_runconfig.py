"""Run configuration: defaults, presets, overrides, and errors naming the key."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from fedrec.errors import ConfigError
from fedrec.runconfig import DEFAULTS, RunConfig, load_toml, parse_overrides, parse_value

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_build() -> None:
    cfg = RunConfig.from_flat({})
    assert cfg.data.dataset == "synthetic" and cfg.model.kind == "explicit" and not cfg.secagg.enabled
    assert cfg.secagg.pipeline and not RunConfig.from_flat({"secagg.pipeline": False}).secagg.pipeline


def test_protocol_preset_applies_and_override_wins() -> None:
    cfg = RunConfig.from_flat({"protocol": "R1", "model.negatives": 3})
    assert cfg.model.kind == "implicit" and cfg.model.negatives == 3 and cfg.data.synthetic.implicit


@pytest.mark.parametrize("key,value,needle", [
    ("local.lr", -0.1, "local.lr"),
    ("dataset", "netflix", "dataset"),
    ("rounds", 0, "rounds"),
    ("strategy.optimizer", "lbfgs", "strategy.optimizer"),
    ("dp.unit", "item", "dp.unit"),
    ("secagg.bits", 16, "secagg.bits"),
    ("secagg.neighbours", "some", "secagg.neighbours"),
    ("secagg.pipeline", 1, "secagg.pipeline"),
    ("secagg.pipeline", "yes", "secagg.pipeline"),
    ("model.dim", "big", "model.dim"),
    ("cohort", -1, "cohort"),
    ("local.fold-in", 3, "local.fold-in"),
])
def test_bad_values_name_the_key(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_flat({key: value})


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean local.lr"):
        RunConfig.from_flat({"local.lrr": 0.1})


def test_parse_values_and_overrides() -> None:
    assert parse_value("8") == 8 and parse_value("1e-5") == 1e-5 and parse_value("true") is True
    assert parse_value("ml-100k") == "ml-100k" and math.isinf(parse_value("inf"))  # type: ignore[arg-type]
    assert parse_overrides(["dp.epsilon=8", "dataset=ml-100k"]) == {"dp.epsilon": 8, "dataset": "ml-100k"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["dp.epsilon"])


def test_toml_nested_and_quoted_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('rounds = 3\n"local.lr" = 0.2\n[dp]\nunit = "user"\nepsilon = 4.0\n')
    assert load_toml(f) == {"rounds": 3, "local.lr": 0.2, "dp.unit": "user", "dp.epsilon": 4.0}
    f.write_text("rounds = [1, 2]\n")
    with pytest.raises(ConfigError, match="only scalars"):
        load_toml(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize("text, line", [
    ('split = "random-one"\nsplit.seed = 3\n', 2),
    ('split.seed = 3\nsplit = "random-one"\n', 2),
    ('rounds = 2\nsplit = "random-one"\n[split]\nseed = 3\n', 3),
])
def test_split_as_value_and_table_is_one_line_naming_the_fix(tmp_path: Path, text: str, line: int) -> None:
    """TOML forbids ``split`` as both a value and a table: the error names the line and says to quote the keys."""
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_toml(f)
    message = str(err.value)
    assert message.startswith(f"{f}: line {line}, column ") and "\n" not in message
    assert "'split' both a value" in message and 'quote the dotted keys: "split.seed" = 1' in message
    f.write_text('split = "random-one"\n"split.seed" = 3\n')  # the documented spelling
    assert RunConfig.from_flat(load_toml(f)).data.split.seed == 3
    f.write_text("rounds = 2\nrounds = 3\n")
    with pytest.raises(ConfigError, match="line 2, column .*'rounds' is set twice"):
        load_toml(f)


def test_split_is_the_only_key_that_is_also_a_prefix() -> None:
    """A key that is both a value and a prefix cannot be written as TOML tables; do not add another."""
    assert [k for k in DEFAULTS if any(o.startswith(f"{k}.") for o in DEFAULTS)] == ["split"]


def test_pyproject_app_config_matches_defaults() -> None:
    """Every key is declared: a protocol-dependent one as "preset", every other one with its default."""
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    from fedrec.deploy.runspec import ENVELOPE_DEFAULTS, from_run_config
    from fedrec.runconfig import PRESET, PRESET_KEYS

    declared = {**DEFAULTS, **{key: PRESET for key in PRESET_KEYS}, **ENVELOPE_DEFAULTS}
    assert app["config"] == declared
    assert from_run_config(app["config"])[0] == RunConfig.from_flat({})


@pytest.mark.parametrize("args", [[], ['protocol="R1"'], ['protocol="R1"', "model.reg=0.05", "rounds=7"],
                                  ['dataset="ml-100k"', "fold=2"]])
def test_flwr_run_config_gets_the_chosen_protocols_presets(args: list[str]) -> None:
    """``flwr run . --run-config ...`` through Flower's own parser and merge of the pyproject table."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    from fedrec.deploy.runspec import from_run_config

    overrides = parse_config_args(args)
    fused = get_fused_config_from_dir(ROOT, overrides)
    cfg, _, _ = from_run_config(fused)
    assert cfg == RunConfig.from_flat(overrides)  # what `fedrec simulate --set` gives for the same keys
    if overrides.get("protocol") == "R1":
        assert cfg.fed.server.name == "adam" and cfg.model.kind == "implicit"
        assert cfg.model.reg == overrides.get("model.reg", 0.02) and cfg.fed.rounds == overrides.get("rounds", 140)


def test_preset_is_a_value_only_for_preset_keys() -> None:
    assert RunConfig.from_flat({"protocol": "R1", "local.lr": "preset"}).fed.local.lr == 0.6
    assert RunConfig.from_flat({"dp.unit": "user", "dp.epsilon": 8.0,
                                "strategy.averaging": "preset"}).fed.averaging == "fedavg"
    with pytest.raises(ConfigError, match="model.dim: expected int, got 'preset'"):
        RunConfig.from_flat({"model.dim": "preset"})


@pytest.mark.parametrize("conf", sorted((ROOT / "simulations" / "conf").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(conf: Path) -> None:
    RunConfig.from_flat(load_toml(conf))


def test_protocol_presets_match_the_tuned_presets() -> None:
    """`fedrec simulate --protocol R1` and `fedrec train-central --protocol R1` train what tune_r1.py chose."""
    from fedrec.model.mf import MFConfig
    from fedrec.runconfig import protocol_preset
    from fedrec.train.aggregate import ServerOptConfig
    from fedrec.train.local import LocalConfig

    cfg = protocol_preset("R1")
    assert cfg.model == MFConfig(kind="implicit", dim=32, reg=0.02, bias_reg=0.01, negatives=16, neg_weight=16.0,
                                 recency_boost=4.0, recency_scale=5.0)
    assert (cfg.fed.rounds, cfg.fed.local, cfg.fed.server, cfg.fed.averaging, cfg.fed.eval_every) == (
        140, LocalConfig(steps=2, lr=0.6, user_lr=1.0, fold_in=False), ServerOptConfig(name="adam", lr=0.05),
        "item", 20)
    assert protocol_preset("E1").model == MFConfig(kind="explicit", dim=32, reg=0.12, bias_reg=0.12)


def test_defaults_are_the_dataclass_defaults() -> None:
    """One home per default: the empty run configuration builds every section as its dataclass defaults."""
    from fedrec.data.spec import DataSpec
    from fedrec.federated.server_state import FedConfig
    from fedrec.model.mf import MFConfig
    from fedrec.privacy.config import DPConfig
    from fedrec.runconfig import SecAggSpec

    cfg = RunConfig.from_flat({})
    assert (cfg.data, cfg.model, cfg.fed, cfg.dp, cfg.secagg) == (DataSpec(), MFConfig(), FedConfig(), DPConfig(),
                                                                   SecAggSpec())
    assert (cfg.round_timeout, cfg.min_clients, cfg.run_dir) == (600.0, 1, "runs/flwr")


@pytest.mark.parametrize(("value", "population", "size"), [(1000, 2000, 1000), (1000, 943, 943), ("all", 5000, 5000),
                                                            (1.0, 5000, 5000), (0.1, 5000, 500)])
def test_eval_cohort_sizes(value: object, population: int, size: int) -> None:
    assert RunConfig.from_flat({"eval-cohort": value}).fed.eval_size(population) == size


@pytest.mark.parametrize("value", [0, -3, "some", True])
def test_eval_cohort_rejects_bad_values(value: object) -> None:
    with pytest.raises(ConfigError, match="eval-cohort"):
        RunConfig.from_flat({"eval-cohort": value})


def test_eval_cohort_sample_is_reproducible_and_leaves_training_draws_alone() -> None:
    from fedrec.federated.server_state import sample_eval_cohort

    nodes = list(range(100, 1100))
    a = sample_eval_cohort(nodes, 50, seed=1, round_=5)
    assert a == sample_eval_cohort(nodes, 50, seed=1, round_=5) and a == sorted(set(a)) and len(a) == 50
    assert a != sample_eval_cohort(nodes, 50, seed=1, round_=10)
    assert sample_eval_cohort(nodes, 5000, seed=1, round_=5) == nodes


def test_downlink_precision_round_trips_within_its_resolution() -> None:
    import numpy as np

    from fedrec.wire import decode_downlink, encode_downlink

    table = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32) * 0.3
    assert encode_downlink(table, "float32") is not None and np.array_equal(decode_downlink(table), table)
    for dtype, nbytes, rel in (("float16", 2, 2**-11), ("bfloat16", 2, 2**-8)):
        wire_form = encode_downlink(table, dtype)
        assert wire_form.itemsize == nbytes
        back = decode_downlink(wire_form)
        assert back.dtype == np.float32 and np.all(np.abs(back - table) <= rel * np.abs(table) + 1e-7)
    assert decode_downlink(encode_downlink(np.array([1.0, -2.5, 0.0], np.float32), "bfloat16")).tolist() == [
        1.0, -2.5, 0.0]  # exactly representable values survive
    with pytest.raises(ConfigError, match="downlink.dtype"):
        RunConfig.from_flat({"downlink.dtype": "int8"})


def test_each_section_builds_itself_from_the_flat_keys() -> None:
    """``RunConfig.from_flat`` is an assembly: each section's ``from_run_config`` reads its own keys."""
    from fedrec.data.spec import DataSpec
    from fedrec.federated.server_state import FedConfig
    from fedrec.model.mf import MFConfig
    from fedrec.runconfig import SecAggSpec, resolve
    from fedrec.train.aggregate import ServerOptConfig
    from fedrec.train.local import LocalConfig

    flat = resolve({"protocol": "R1", "secagg.bits": 64, "fold": 3, "local.steps": 4})
    cfg = RunConfig.from_flat(flat)
    assert DataSpec.from_run_config(flat) == cfg.data and cfg.data.fold == 3
    assert MFConfig.from_run_config(flat) == cfg.model and cfg.model.kind == "implicit"
    assert FedConfig.from_run_config(flat) == cfg.fed
    assert LocalConfig.from_run_config(flat) == cfg.fed.local == LocalConfig(steps=4, lr=0.6, user_lr=1.0,
                                                                             fold_in=False)
    assert ServerOptConfig.from_run_config(flat) == cfg.fed.server
    assert SecAggSpec.from_run_config(flat) == cfg.secagg and cfg.secagg.bits == 64
    for section, key in ((MFConfig, "model.dim"), (LocalConfig, "local.steps"), (ServerOptConfig, "strategy.eps"),
                         (FedConfig, "rounds"), (SecAggSpec, "secagg.timeout"), (DataSpec, "fold")):
        with pytest.raises(ConfigError, match=f"^{key}: expected"):
            section.from_run_config({**flat, key: "x"})  # type: ignore[attr-defined]
