"""The run configuration: one flat, kebab-case key space shared by every entry point.

Flower carries a run's configuration as a flat mapping (``dp.epsilon = 8``);
TOML files under ``simulations/conf/``, ``--set key=value`` overrides and
``[tool.flwr.app.config]`` in ``pyproject.toml`` all speak it. This module is the
single place where those keys are declared, defaulted (per protocol) and turned
into frozen config objects. Every bad value fails here, before the first round,
with an error naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import logging
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from fedrec import flatconfig as fc
from fedrec.data.options import DATA_DEFAULTS
from fedrec.data.spec import DataSpec, synthetic_key_known
from fedrec.errors import ConfigError, SecAggError
from fedrec.federated.plan import (
    BATCH_SIZE_KEY,
    LOCAL_EPOCHS_KEY,
    MIN_SURVIVORS_KEY,
    PLAN_KEYS,
    RATING_RATE_KEY,
    PrivacyPlan,
    build_plan,
)
from fedrec.federated.server_state import FedConfig
from fedrec.model.mf import MFConfig
from fedrec.privacy.config import RUN_CONFIG_KEYS as DP_KEYS
from fedrec.privacy.config import DPConfig
from fedrec.secagg.graph import DEFAULT_SECURITY, SecurityParams
from fedrec.train.aggregate import ServerOptConfig
from fedrec.train.local import LocalConfig
from fedrec.wire import DOWNLINK_DTYPES

log = logging.getLogger(__name__)

Scalar = bool | int | float | str

# Keys that are valid but have no default (absent means "not set").
OPTIONAL_KEYS = ("dp.epsilon", "dp.noise-multiplier", "dp.local-epochs", "dp.batch-size", "dp.min-survivors",
                 "dp.rating-rate")

PROTOCOL_PRESETS: dict[str, dict[str, Scalar]] = {
    "E1": {},
    # chosen on validation (python -m simulations.tune_r1; README "How the defaults were chosen")
    "R1": {"model.reg": 0.02, "model.bias-reg": 0.01, "model.negatives": 16, "model.neg-weight": 16.0,
           "model.recency-boost": 4.0, "model.recency-scale": 5.0, "local.fold-in": False, "rounds": 140,
           "eval-every": 20, "local.steps": 2, "local.lr": 0.6, "local.user-lr": 1.0, "strategy.optimizer": "adam",
           "strategy.server-lr": 0.05},
}

# With differential privacy on, devices send no per-item counts, so the server averages per device.
DP_PRESET: dict[str, Scalar] = {"strategy.averaging": "fedavg"}

#: A value meaning "the preset's": ``[tool.flwr.app.config]`` declares every key of :data:`PRESET_KEYS`
#: with it, so that ``flwr run . --run-config 'protocol="R1"'`` gets R1's values for them, not E1's.
PRESET = "preset"
#: Keys whose default depends on the protocol (:data:`PROTOCOL_PRESETS`) or on ``dp.unit`` (:data:`DP_PRESET`).
PRESET_KEYS: tuple[str, ...] = tuple(sorted({key for preset in PROTOCOL_PRESETS.values() for key in preset}
                                            | set(DP_PRESET)))


@dataclass(frozen=True)
class SecAggSpec:
    """Secure-aggregation settings (``secagg.*``)."""

    enabled: bool = False
    threshold: float = 0.5
    neighbours: str = "auto"
    bits: int = 32
    clip: float = 1.0
    timeout: float = 600.0
    pipeline: bool = True
    """Send the next round's setup and share with this round's mask and unmask (two trips a round, not four)."""
    eval_min_cohort: int = 5
    """Fewest devices whose evaluation sums the server may unmask together (the evaluation round's threshold)."""
    authority_key: str = ""
    """File of the enrolment authority's public key (``authority.pub``, 32 raw bytes) for the server to verify
    every key advertisement and certificate with, dropping devices that fail; empty: only devices check them.
    A deployment's ServerApp reads it (``fedrec server run`` sets it from the state folder); a simulation uses
    its runner's own authority instead."""
    sigma: float = DEFAULT_SECURITY.sigma
    """Security parameter of the degree and threshold bound (:class:`fedrec.secagg.SecurityParams`): the server
    and the corrupt devices learn more than the sum with probability at most 2^-sigma per round."""
    eta: float = DEFAULT_SECURITY.eta
    """Correctness parameter: a round fails for lack of live neighbours with probability at most 2^-eta."""
    corrupt: float = DEFAULT_SECURITY.corrupt
    """Fraction of a round's participants assumed corrupt and colluding with the server (gamma)."""
    dropout: float = DEFAULT_SECURITY.dropout
    """Probability that a participant drops out of a round (delta)."""

    @property
    def security(self) -> SecurityParams:
        """The bound the server picks ``k`` and ``t`` by. Devices hold the result to their own floor
        (``DEFAULT_SECURITY``, never taken from the server): settings weaker than it make them refuse."""
        return SecurityParams(sigma=self.sigma, eta=self.eta, corrupt=self.corrupt, dropout=self.dropout)

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> SecAggSpec:
        """The ``secagg.*`` keys of a resolved flat configuration."""
        threshold = fc.positive(flat, "secagg.threshold")
        if threshold > 1 and not threshold.is_integer():
            raise ConfigError(f"secagg.threshold: a fraction in (0, 1] or a whole number of devices >= 2, "
                              f"got {threshold}")
        neighbours = str(flat["secagg.neighbours"])
        if neighbours not in ("all", "auto") and not (neighbours.isdigit() and int(neighbours) >= 2):
            raise ConfigError(f"secagg.neighbours: 'all', 'auto' or an integer >= 2, got {neighbours!r}")
        bits = fc.get(flat, "secagg.bits", int)
        if bits not in (32, 64):
            raise ConfigError(f"secagg.bits: must be 32 or 64, got {bits}")
        spec = cls(fc.get(flat, "secagg.enabled", bool), threshold, neighbours, bits,
                   fc.positive(flat, "secagg.clip"), fc.positive(flat, "secagg.timeout"),
                   fc.get(flat, "secagg.pipeline", bool), fc.integer(flat, "secagg.eval-min-cohort", low=2),
                   fc.get(flat, "secagg.authority-key", str),
                   *(fc.get(flat, f"secagg.{name}", float) for name in ("sigma", "eta", "corrupt", "dropout")))
        for name in ("sigma", "eta", "corrupt", "dropout"):
            try:
                SecurityParams(**{name: getattr(spec, name)})
            except SecAggError as exc:
                raise ConfigError(f"secagg.{name}: {exc}") from None
        return spec


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved, validated run configuration."""

    flat: Mapping[str, Scalar]
    data: DataSpec
    model: MFConfig
    fed: FedConfig
    dp: DPConfig
    secagg: SecAggSpec
    round_timeout: float = 600.0
    """Seconds the server waits for a round's replies (a late reply is a dropout)."""
    min_clients: int = 1
    """Devices the server waits for before round 1."""
    run_dir: str = "runs/flwr"
    downlink: str = "float32"
    """Precision of the downlink table (``downlink.dtype``: float32, float16, bfloat16)."""
    """Where ``flwr run`` writes checkpoints and metrics (``fedrec simulate`` takes ``--run-dir``)."""

    @classmethod
    def from_flat(cls, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """Resolve defaults, protocol presets and overrides; each section builds itself; cross-check them."""
        flat = resolve(overrides or {})
        check_finite(flat)
        cfg = cls(flat=flat, data=DataSpec.from_run_config(flat), model=MFConfig.from_run_config(flat),
                  fed=FedConfig.from_run_config(flat), dp=_dp(flat), secagg=SecAggSpec.from_run_config(flat),
                  round_timeout=fc.positive(flat, "round-timeout"),
                  min_clients=fc.integer(flat, "min-clients", low=1), run_dir=fc.get(flat, "run-dir", str),
                  downlink=fc.choice(flat, "downlink.dtype", DOWNLINK_DTYPES))
        _check_privacy(cfg)
        _check_wrmf(cfg)
        return cfg

    def privacy_plan(self) -> PrivacyPlan:
        """The run's public DP parameters (the same object for the same settings: calibration runs once)."""
        return build_plan(self.dp, rounds=self.fed.rounds, lr=self.fed.local.lr,
                          local_epochs=_opt_int(self.flat, LOCAL_EPOCHS_KEY),
                          batch_size=_opt_int(self.flat, BATCH_SIZE_KEY),
                          min_survivors=_opt_int(self.flat, MIN_SURVIVORS_KEY),
                          rating_rate=_opt_float(self.flat, RATING_RATE_KEY))

    def for_population(self, population: int) -> RunConfig:
        """This configuration for ``population`` devices: distributed noise's ``t_min`` resolved.

        The server calls it once it knows the connected devices and sends
        ``t_min`` in every downlink (``fedrec.wire.CFG_MIN_SURVIVORS``): a device
        cannot work it out, as it does not know the population. Unchanged for other modes, or when
        ``dp.min-survivors`` is given.
        """
        t_min = min_survivors(self, population)
        if t_min is None or self.flat.get(MIN_SURVIVORS_KEY) is not None:
            return self
        log.info("distributed noise: t_min = %d devices per round", t_min)
        return self.with_min_survivors(t_min)

    def with_min_survivors(self, t_min: int) -> RunConfig:
        """This configuration with ``dp.min-survivors = t_min`` (what a device applies from the downlink)."""
        if self.flat.get(MIN_SURVIVORS_KEY) == t_min:
            return self
        return RunConfig.from_flat({**self.flat, MIN_SURVIVORS_KEY: t_min})

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the resolved flat configuration (sorted JSON): equal on two sides that agree on every key.

        The server sends it in each downlink; a device whose own configuration
        (from ``Context.run_config``) has another digest refuses the message.
        """
        text = json.dumps(dict(self.flat), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _field(cls: type[Any], name: str) -> Any:
    field = {f.name: f for f in fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{name} has no default"
    return field.default_factory()


#: Each run-configuration key with a default -> the config field that holds it. The default IS that
#: field's default (one home per fact); protocol presets below override some of them.
KEY_FIELDS: dict[str, tuple[type[Any], str]] = {
    "dataset": (DataSpec, "dataset"), "data-dir": (DataSpec, "data_dir"), "protocol": (DataSpec, "protocol"),
    "fold": (DataSpec, "fold"), "users-per-client": (DataSpec, "users_per_client"),
    "rounds": (FedConfig, "rounds"), "cohort": (FedConfig, "cohort"), "eval-every": (FedConfig, "eval_every"),
    "seed": (FedConfig, "seed"), "round-timeout": (RunConfig, "round_timeout"), "run-dir": (RunConfig, "run_dir"),
    "min-clients": (RunConfig, "min_clients"), "eval-cohort": (FedConfig, "eval_cohort"),
    "downlink.dtype": (RunConfig, "downlink"),
    **{f"model.{name.replace('_', '-')}": (MFConfig, name) for name in
       ("dim", "reg", "bias_reg", "init_std", "negatives", "loss", "neg_weight", "recency_boost", "recency_scale",
        "confidence", "pop_exponent")},
    **{f"local.{name.replace('_', '-')}": (LocalConfig, name) for name in ("steps", "lr", "user_lr", "fold_in")},
    "strategy.averaging": (FedConfig, "averaging"), "strategy.optimizer": (ServerOptConfig, "name"),
    "strategy.server-lr": (ServerOptConfig, "lr"),
    **{f"strategy.{name}": (ServerOptConfig, name) for name in ("beta1", "beta2", "eps")},
    **{key: (DPConfig, name) for name, key in DP_KEYS.items() if _field(DPConfig, name) is not None},
    **{f"secagg.{f.name.replace('_', '-')}": (SecAggSpec, f.name) for f in fields(SecAggSpec)},
}

#: key -> default, derived from the config dataclasses.
DEFAULTS: dict[str, Scalar] = {key: _field(cls, name) for key, (cls, name) in KEY_FIELDS.items()}
DEFAULTS.update(DATA_DEFAULTS)  # csv.* and split*: their one home is fedrec/data/options.py


def min_survivors(cfg: RunConfig, population: int) -> int | None:
    """``t_min`` of distributed user-level noise for ``population`` devices.

    ``dp.min-survivors`` when given. Otherwise, with secure aggregation on,
    an absolute ``secagg.threshold`` ``t``: SecAgg never reveals a sum of
    fewer survivors, so each device's share ``1 / t`` of the variance adds up
    to the full ``(sigma S)^2`` in anything the server can see. (A fractional
    threshold is refused at config time by :meth:`RunConfig.from_flat`: the
    threshold SecAgg+ derives from it depends on the round's neighbourhoods.)
    With secure aggregation off, the expected cohort ``floor(q N)``: the
    server sees every update anyway, so the noise only protects the released
    model, and the server adds the missing share itself in a round with fewer
    survivors (see :class:`~fedrec.federated.policy.UserLevelPolicy`). None for
    other modes.
    """
    if cfg.dp.unit != "user" or cfg.dp.noise != "distributed":
        return None
    given = cfg.flat.get(MIN_SURVIVORS_KEY)
    if given is not None:
        return int(fc.get(cfg.flat, MIN_SURVIVORS_KEY, int))
    if cfg.secagg.enabled:
        return int(cfg.secagg.threshold)
    return max(1, math.floor(cfg.dp.cohort_rate * population))



def _check_privacy(cfg: RunConfig) -> None:
    """Refuse privacy settings that make no sense together; each error names a key.

    Called by :meth:`RunConfig.from_flat`, so it runs before anything trains.
    """
    flat, dp = cfg.flat, cfg.dp
    for key in (LOCAL_EPOCHS_KEY, BATCH_SIZE_KEY, MIN_SURVIVORS_KEY):
        value = flat.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
            raise ConfigError(f"{key}: must be an integer >= 1, got {value!r}")
    rate = flat.get(RATING_RATE_KEY)
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not 0 < rate <= 1):
        raise ConfigError(f"{RATING_RATE_KEY}: must be a probability in (0, 1], got {rate!r}")
    if dp.unit != "rating":
        for key in (LOCAL_EPOCHS_KEY, BATCH_SIZE_KEY, RATING_RATE_KEY):
            if flat.get(key) is not None:
                raise ConfigError(f"{key}: only used by rating-level DP-SGD, but dp.unit={dp.unit!r}")
    if flat.get(MIN_SURVIVORS_KEY) is not None and not (dp.unit == "user" and dp.noise == "distributed"):
        raise ConfigError(f"{MIN_SURVIVORS_KEY}: only used by distributed user-level noise "
                          f"(dp.unit='user', dp.noise='distributed')")
    if dp.unit != "user" and dp.cohort_rate != 1.0:
        raise ConfigError(f"dp.cohort-rate: Poisson cohorts belong to user-level DP, but dp.unit={dp.unit!r}; "
                          "use cohort for the devices per round")
    if not dp.enabled:
        return
    if cfg.fed.averaging != "fedavg":
        raise ConfigError(f"strategy.averaging: {cfg.fed.averaging!r} divides by per-item counts, which a "
                          "DP device does not send (they are not covered by the guarantee); use 'fedavg'")
    if dp.unit == "rating":
        if cfg.model.kind != "explicit":
            raise ConfigError("dp.unit: rating-level DP-SGD trains the explicit rating model (protocol E1); "
                              f"protocol {flat.get('protocol')!r} has implicit feedback, use dp.unit='user'")
        if dp.noise != "central":
            raise ConfigError("dp.noise: rating-level noise is added on each device by DP-SGD; "
                              "'distributed' applies to dp.unit='user'")
        if dp.secure_mode and importlib.util.find_spec("torchcsprng") is None:
            raise ConfigError("dp.secure-mode: rating-level secure mode needs Opacus's torchcsprng, "
                              "which is not installed")
    if dp.unit == "user":
        if cfg.fed.cohort != 1.0:
            raise ConfigError("cohort: user-level DP samples each device independently with probability "
                              "dp.cohort-rate; leave cohort at 1")
        if (dp.noise == "distributed" and cfg.secagg.enabled and flat.get(MIN_SURVIVORS_KEY) is None
                and cfg.secagg.threshold <= 1):
            raise ConfigError(f"{MIN_SURVIVORS_KEY}: distributed noise under secure aggregation needs t_min, the "
                              "fewest updates the server can ever unmask; set it (at most the SecAgg threshold) "
                              "or give secagg.threshold as an absolute count")
        if dp.noise == "distributed" and not cfg.secagg.enabled:
            log.warning("dp.noise = distributed without secure aggregation: the server sees each update "
                        "with only 1/t_min of the noise; the guarantee covers the released model only")


def protocol_preset(protocol: str) -> RunConfig:
    """The run configuration of ``protocol`` with nothing overridden (its model is the centralized trainer's too)."""
    return RunConfig.from_flat({"protocol": protocol})


def _check_wrmf(cfg: RunConfig) -> None:
    """``model.loss = "wrmf"`` under user-level DP: its popularity weights would come from counts DP does not send."""
    if cfg.model.kind != "implicit" or cfg.model.loss != "wrmf":
        return
    if cfg.dp.enabled and cfg.model.pop_exponent != 0:
        raise ConfigError(f"model.pop-exponent: {cfg.model.pop_exponent} sets the missing-data weights of 'wrmf' from "
                          "the summed per-item counts, which a DP device does not send (the guarantee hides "
                          "them); set model.pop-exponent = 0 under dp.unit = \"user\"")


def resolve(overrides: Mapping[str, Any]) -> dict[str, Scalar]:
    """Defaults + protocol preset + overrides, with unknown keys rejected.

    An override of a :data:`PRESET_KEYS` key with the value :data:`PRESET` (or None) sets nothing.
    """
    for key in overrides:
        _check_known(key)
    protocol = str(overrides.get("protocol", DEFAULTS["protocol"]))
    if protocol not in PROTOCOL_PRESETS:
        raise ConfigError(f"protocol: {protocol!r} is not one of {tuple(PROTOCOL_PRESETS)}")
    flat: dict[str, Scalar] = {**DEFAULTS, **PROTOCOL_PRESETS[protocol]}
    if overrides.get("dp.unit", DEFAULTS["dp.unit"]) != "off":
        flat.update(DP_PRESET)
    flat.update({k: v for k, v in overrides.items() if v is not None and not (v == PRESET and k in PRESET_KEYS)})
    return flat


#: Float keys where ``inf`` has a meaning (no noise); every other float key must be finite.
INFINITE_ALLOWED = ("dp.epsilon",)


def check_finite(flat: Mapping[str, Scalar]) -> None:
    """Refuse NaN in any key and infinity outside :data:`INFINITE_ALLOWED`, naming the key."""
    for key, value in flat.items():
        if not isinstance(value, float) or math.isfinite(value):
            continue
        if math.isnan(value):
            raise ConfigError(f"{key}: must be a number, got nan")
        if key not in INFINITE_ALLOWED:
            raise ConfigError(f"{key}: must be finite, got {value}")


def parse_value(text: str) -> Scalar:
    """A ``--set`` value: TOML scalar syntax (``8``, ``1e-5``, ``true``, ``"x"``), else a bare string."""
    if text.strip().lower() in ("inf", "+inf"):
        return math.inf
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if not isinstance(value, (bool, int, float, str)):
        raise ConfigError(f"--set value {text!r}: only scalars are allowed")
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Scalar]:
    """``["dp.epsilon=8", ...]`` -> ``{"dp.epsilon": 8}``."""
    out: dict[str, Scalar] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_toml(path: Path) -> dict[str, Scalar]:
    """A config file: nested TOML tables flattened to dotted keys (``[dp] epsilon = 8``)."""
    try:
        text = Path(path).read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(path, text, exc)) from exc
    return _flatten(data, "", str(path))


def _toml_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    """One line for a TOML error; spelled out for ``split``, the one key that is also a prefix (``split.seed``).

    TOML cannot hold ``split = "random-one"`` beside ``split.seed = 1`` or a
    ``[split]`` table; quoted dotted keys (``"split.seed" = 1``) are plain keys.
    """
    found = re.search(r"at line (\d+), column (\d+)", str(exc))
    if found is None or "overwrite" not in str(exc):
        return f"{path}: cannot read config: {exc}"
    line, column = int(found[1]), int(found[2])
    source = text.splitlines()[line - 1].strip() if line <= len(text.splitlines()) else ""
    key = source.strip("[]").partition("=")[0].strip().strip('"')
    head = key.split(".")[0].strip()
    if head in DEFAULTS and any(k.startswith(f"{head}.") for k in DEFAULTS):
        return (f"{path}: line {line}, column {column}: {key!r}: TOML cannot make {head!r} both a value "
                f"({head} = ...) and a table ({head}.<option> or [{head}]); quote the dotted keys: "
                f"\"{head}.seed\" = 1")
    return f"{path}: line {line}, column {column}: {key!r} is set twice"


def dump_toml(flat: Mapping[str, Any], *, comment: str = "") -> str:
    """A flat run config as TOML with quoted dotted keys (``"dp.epsilon" = 8``), read back by :func:`load_toml`."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"{json.dumps(key)} = {toml_value(flat[key])}" for key in sorted(flat)]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """One scalar in TOML syntax (a JSON string is a valid TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def _flatten(table: Mapping[str, Any], prefix: str, where: str) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{full}.", where))
        elif isinstance(value, (bool, int, float, str)):
            out[full] = value
        else:
            raise ConfigError(f"{where}: {full}: only scalars are allowed, got {type(value).__name__}")
    return out


def _check_known(key: str) -> None:
    if key in DEFAULTS or key in OPTIONAL_KEYS:
        return
    if synthetic_key_known(key):
        return
    close = difflib.get_close_matches(key, [*DEFAULTS, *OPTIONAL_KEYS], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{key}: unknown configuration key{hint}")


def _dp(flat: Mapping[str, Scalar]) -> DPConfig:
    keys = {k: v for k, v in flat.items() if k.startswith("dp.") and k not in PLAN_KEYS}
    return DPConfig.from_run_config(keys)


def _opt_float(flat: Mapping[str, Any], key: str) -> float | None:
    value = flat.get(key)
    return None if value is None else float(value)


def _opt_int(flat: Mapping[str, Any], key: str) -> int | None:
    value = flat.get(key)
    return None if value is None else int(value)
