"""The contract every server privacy policy keeps (a mixin each policy's test class passes).

The round loops (Flower's and the reference) call a policy in a fixed order and
persist it in checkpoints; whatever a policy does with privacy, these hold:
the cohort is drawn from the nodes, the sums keep their shapes, the state
survives a checkpoint round trip and refuses a checkpoint of another unit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrec import wire
from fedrec.errors import PrivacyError
from fedrec.federated.plan import build_plan
from fedrec.federated.policy import RatingLevelPolicy, ServerPolicy, UserLevelPolicy, server_policy
from fedrec.privacy.config import DPConfig
from fedrec.train.aggregate import RoundSums

N_ITEMS, DIM, POPULATION = 12, 3, 40


def _sums(n_clients: int) -> RoundSums:
    rng = np.random.default_rng(5)
    return RoundSums(rng.normal(size=(N_ITEMS, DIM)), rng.normal(size=N_ITEMS), np.ones(N_ITEMS), n_clients)


class PolicyContract:
    """Mixin: a subclass sets ``unit`` and builds a fresh policy in :meth:`make`."""

    unit: str

    def make(self) -> ServerPolicy:
        raise NotImplementedError

    def test_unit(self) -> None:
        assert self.make().unit == self.unit

    def test_cohort_is_drawn_from_the_nodes(self) -> None:
        nodes = list(range(100, 100 + POPULATION))
        cohort = self.make().cohort(nodes, 10, np.random.default_rng(0))
        assert set(cohort) <= set(nodes) and len(set(cohort)) == len(cohort)

    def test_finish_round_keeps_the_shapes(self) -> None:
        sums, expected = self.make().finish_round(_sums(8), np.random.default_rng(1))
        assert sums.item_factors.shape == (N_ITEMS, DIM) and sums.item_bias.shape == (N_ITEMS,)
        assert sums.counts.shape == (N_ITEMS,) and sums.n_clients == 8
        assert expected is None or expected > 0

    def test_report_and_state_are_json(self) -> None:
        policy = self.make()
        policy.finish_round(_sums(8), np.random.default_rng(1))
        json.dumps(policy.report([{wire.MET_OK: 1.0}]))
        json.dumps(policy.state_dict())

    def test_state_survives_a_checkpoint(self) -> None:
        policy = self.make()
        policy.finish_round(_sums(8), np.random.default_rng(1))
        policy.report([{wire.MET_OK: 1.0}])
        restored = self.make()
        restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
        assert restored.state_dict() == policy.state_dict()
        assert restored.allows_next_round() == policy.allows_next_round()

    def test_refuses_a_checkpoint_of_another_unit(self) -> None:
        other = "user" if self.unit != "user" else "off"
        with pytest.raises(PrivacyError, match="dp.unit"):
            self.make().load_state_dict({"unit": other})


class TestOffPolicy(PolicyContract):
    unit = "off"

    def make(self) -> ServerPolicy:
        return server_policy(None, population=POPULATION)

    def test_sums_pass_through(self) -> None:
        sums = _sums(3)
        assert self.make().finish_round(sums, np.random.default_rng(0)) == (sums, None)


class TestRatingLevelPolicy(PolicyContract):
    unit = "rating"

    def make(self) -> ServerPolicy:
        policy = server_policy(build_plan(DPConfig(unit="rating", epsilon=8.0), rounds=3, lr=0.1),
                               population=POPULATION)
        assert isinstance(policy, RatingLevelPolicy)
        return policy


class TestUserLevelPolicy(PolicyContract):
    unit = "user"

    def make(self) -> ServerPolicy:
        plan = build_plan(DPConfig(unit="user", noise_multiplier=1.0, cohort_rate=0.5), rounds=3, lr=0.1)
        policy = server_policy(plan, population=POPULATION)
        assert isinstance(policy, UserLevelPolicy)
        return policy

    def test_the_sum_is_noised_and_counts_dropped(self) -> None:
        sums = _sums(8)
        noisy, expected = self.make().finish_round(sums, np.random.default_rng(1))
        assert not np.allclose(noisy.item_factors, sums.item_factors) and not noisy.counts.any()
        assert expected == 0.5 * POPULATION
