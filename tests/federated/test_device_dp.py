"""User-level DP on a device (:func:`fedrec.federated.device.privatise_update`): one clip over every segment sent."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec import wire
from fedrec.data.interactions import Dataset
from fedrec.data.partition import partitions
from fedrec.errors import ConfigError
from fedrec.federated.device import device_train, privatise_update
from fedrec.federated.plan import PrivacyPlan, build_plan, with_min_survivors
from fedrec.federated.policy import UserLevelPolicy
from fedrec.federated.reference import train_in_process
from fedrec.federated.server_state import ServerState
from fedrec.model.mf import MFConfig
from fedrec.model.params import GlobalParams
from fedrec.privacy.config import DPConfig
from fedrec.runconfig import FedConfig, RunConfig
from fedrec.train.aggregate import RoundSums, ServerOptConfig
from fedrec.train.local import LocalConfig, LocalUpdate

WRMF = MFConfig(kind="implicit", dim=4, loss="wrmf", reg=1.0, confidence=3.0, recency_boost=0.0)


def _plan(clip: float, *, noise: str = "central", noise_multiplier: float = 1.0,
          t_min: int | None = None) -> PrivacyPlan:
    dp = DPConfig(unit="user", noise=noise, clip=clip, noise_multiplier=noise_multiplier,  # type: ignore[arg-type]
                  cohort_rate=0.5)
    plan = build_plan(dp, rounds=3, lr=1.0)
    plan = with_min_survivors(plan, t_min) if t_min is not None else plan
    assert plan.user is not None
    return plan


def _joint_norm(update: LocalUpdate) -> float:
    parts = [update.item_factors, update.item_bias, *update.extra.values()]
    return float(np.sqrt(sum(float((np.asarray(p, np.float64) ** 2).sum()) for p in parts)))


@settings(max_examples=60, deadline=None)
@given(n_items=st.integers(1, 30), dim=st.integers(1, 6), scale=st.floats(1e-3, 1e3),
       clip=st.floats(1e-2, 10.0), seed=st.integers(0, 2**32 - 1))
def test_the_joint_clip_covers_the_extra_segments(n_items: int, dim: int, scale: float, clip: float,
                                                  seed: int) -> None:
    """Whatever the segments' sizes: the norm over all of them is at most ``S``; under it, nothing changes."""
    rng = np.random.default_rng(seed)
    update = LocalUpdate(scale * rng.standard_normal((n_items, dim)).astype(np.float32),
                         scale * rng.standard_normal(n_items).astype(np.float32), np.ones(n_items, np.float32), 5,
                         0.1, {wire.ARRAY_USER_GRAM: scale * rng.standard_normal(dim * dim).astype(np.float32),
                               wire.ARRAY_ITEM_CURVATURE: scale * rng.standard_normal(n_items).astype(np.float32)})
    plan = _plan(clip, noise_multiplier=0.0).user
    assert plan is not None
    out = privatise_update(update, plan, rng=np.random.default_rng(0))
    before, after = _joint_norm(update), _joint_norm(out)
    assert after <= clip * (1 + 1e-5)
    assert set(out.extra) == set(update.extra) and not out.counts.any()
    if before <= clip:
        for name in wire.WRMF_SEGMENTS:
            np.testing.assert_allclose(out.extra[name], update.extra[name], rtol=1e-6)
    else:  # one factor for every segment: the direction of the whole update is kept
        factor = after / before
        np.testing.assert_allclose(out.extra[wire.ARRAY_USER_GRAM], factor * update.extra[wire.ARRAY_USER_GRAM],
                                   rtol=1e-4, atol=1e-6 * scale)


def test_distributed_noise_reaches_the_extra_segments(small_implicit: Dataset) -> None:
    """A device's ``p p^T`` and curvature get its noise share, as its item update does."""
    plan = _plan(0.5, noise="distributed", noise_multiplier=2.0, t_min=4)
    assert plan.user is not None
    glob = GlobalParams.init(small_implicit.train.n_items, WRMF.dim, init_std=0.1, seed=0)
    source = partitions(small_implicit)[0]
    outs = [device_train(source, {}, glob, model=WRMF, local=LocalConfig(), seed=0, round_=r, privacy=plan,
                         seeded_noise=True).update for r in range(40)]
    gram = np.stack([o.extra[wire.ARRAY_USER_GRAM] for o in outs])
    assert gram.shape == (40, WRMF.dim ** 2)
    share = plan.user.device_noise_std()
    assert share == pytest.approx(2.0 * 0.5 / 2)  # sigma S / sqrt(t_min)
    assert np.std(gram - gram.mean(axis=0)) == pytest.approx(share, rel=0.2)


def test_central_noise_reaches_the_extra_segments() -> None:
    plan = _plan(0.5, noise_multiplier=1.3)
    assert plan.user is not None
    policy = UserLevelPolicy(plan.user, population=100)
    extra = {wire.ARRAY_USER_GRAM: np.zeros(64 * 64), wire.ARRAY_ITEM_CURVATURE: np.zeros(4000)}
    noisy, expected = policy.finish_round(RoundSums(np.zeros((10, 4)), np.zeros(10), np.ones(10), 7, extra),
                                          np.random.default_rng(3))
    assert set(noisy.extra) == set(extra) and expected == pytest.approx(50.0)
    for name in extra:
        assert np.std(noisy.extra[name]) == pytest.approx(1.3 * 0.5, rel=0.05)


def test_a_dp_wrmf_round_nobody_survived_still_releases_its_noisy_step() -> None:
    """Skipping the update of an empty Poisson cohort would reveal that it was empty."""
    state = ServerState.start(6, WRMF, FedConfig(server=ServerOptConfig(name="sgd", lr=1.0)), global_mean=0.0)
    before = state.glob.item_factors.copy()
    rng = np.random.default_rng(1)
    extra = {wire.ARRAY_USER_GRAM: rng.standard_normal(16), wire.ARRAY_ITEM_CURVATURE: rng.standard_normal(6)}
    sums = RoundSums(rng.standard_normal((6, 4)), np.zeros(6), np.zeros(6), 0, extra)
    state.apply(sums, expected_clients=3.0)
    assert not np.array_equal(state.glob.item_factors, before) and np.isfinite(state.glob.item_factors).all()
    plain = ServerState.start(6, WRMF, FedConfig(), global_mean=0.0)
    plain.apply(sums)  # without DP an empty round leaves the table
    np.testing.assert_array_equal(plain.glob.item_factors, before)


def test_a_noisy_curvature_cannot_turn_the_step_around() -> None:
    """The divisor's eigenvalues stay at ``reg`` or above, however negative the noisy sums come out."""
    state = ServerState.start(5, WRMF, FedConfig(server=ServerOptConfig(name="sgd", lr=1.0)), global_mean=0.0)
    q = state.glob.item_factors.astype(np.float64)
    extra = {wire.ARRAY_USER_GRAM: -50.0 * np.eye(4).ravel(), wire.ARRAY_ITEM_CURVATURE: np.full(5, -1e3)}
    state.apply(RoundSums(np.zeros((5, 4)), np.zeros(5), np.zeros(5), 2, extra))
    # gradient reg q (S clipped to 0); the step divides it by reg: q - q = 0, never a flip or a blow-up
    np.testing.assert_allclose(state.glob.item_factors, q - q, atol=1e-6)


def test_wrmf_under_user_level_dp_through_the_reference_loop(small_implicit: Dataset) -> None:
    """Every segment noised and the budget reported: the loop trains and stays finite."""
    model = replace(WRMF, dim=8)
    cfg = RunConfig.from_flat({"protocol": "R1", "model.loss": "wrmf", "dp.unit": "user", "dp.epsilon": 50.0,
                               "dp.cohort-rate": 0.5, "dp.clip": 2.0, "rounds": 3, "eval-every": 3,
                               "strategy.optimizer": "sgd", "strategy.server-lr": 1.0})
    state, history = train_in_process(small_implicit, model, cfg.fed, privacy=cfg.privacy_plan())
    assert np.isfinite(state.glob.item_factors).all()
    assert history[-1]["dp_unit"] == "user" and 0 < history[-1]["epsilon"] <= 50.0
    assert 0 <= history[-1]["hr@10"] <= 1


def test_the_run_config_takes_wrmf_with_secagg_and_dp_but_not_popularity_weights_under_dp() -> None:
    assert RunConfig.from_flat({"protocol": "R1", "model.loss": "wrmf", "secagg.enabled": True}).secagg.enabled
    cfg = RunConfig.from_flat({"protocol": "R1", "model.loss": "wrmf", "dp.unit": "user", "dp.epsilon": 8.0})
    assert cfg.dp.unit == "user"
    with pytest.raises(ConfigError, match=r"model.pop-exponent.*counts.*dp.unit"):
        RunConfig.from_flat({"protocol": "R1", "model.loss": "wrmf", "model.pop-exponent": -0.5,
                             "dp.unit": "user", "dp.epsilon": 8.0})
