from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fedrec.client import Device, Interaction, write_key_file

from fedrec.errors import ConfigError, DeployError, ModelError, RollbackError, SignatureError
from fedrec.model.params import GlobalParams
from fedrec.store.artifact import sign_model

KEY = bytes(range(32))
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


def _table(n: int = 400, d: int = 8) -> GlobalParams:
    rng = np.random.default_rng(0)
    return GlobalParams(rng.standard_normal((n, d)).astype(np.float32) * 0.5,
                        rng.standard_normal(n).astype(np.float32) * 0.3, 3.5)


def _device(tmp_path: Path, round_: int | None = 1) -> Device:
    dev = Device.open(tmp_path / "u.fedrec", key=KEY, public_key=SIGNER.public_key())
    if round_ is not None:
        dev.load_model(sign_model(_table(), round_=round_, run="t", signing_key=SIGNER))
    return dev


def test_each_rating_changes_recommendations_at_once_and_seen_are_excluded(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        before = dev.recommend(5)
        dev.record(int(before.items[0]), rating=1.0, timestamp=1)
        after = dev.recommend(5)
        assert after.items != before.items and before.items[0] not in after.items
        dev.record(int(after.items[0]), rating=5.0, timestamp=2)
        assert dev.recommend(5).items != after.items
        assert len(dev.recommend(400)) == 398


def test_new_user_is_personal_after_a_few_ratings(tmp_path: Path) -> None:
    """Five ratings planted from a taste vector: the top-10 moves towards items that taste likes."""
    glob = _table()
    taste = np.random.default_rng(4).standard_normal(8).astype(np.float32)
    liked = np.argsort(-(glob.item_factors @ taste))
    with _device(tmp_path) as dev:
        popular = set(dev.recommend(10).items)
        dev.record_many([Interaction(int(i), 5.0, False, j) for j, i in enumerate(liked[:3])] +
                        [Interaction(int(i), 1.0, False, 9) for i in liked[-2:]])
        personal = dev.recommend(10).items
    good = set(liked[:60].tolist())
    assert len(good & set(personal)) > len(good & popular)


def test_forget_and_wipe(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        dev.record(3, rating=5.0)
        dev.record(9, event=True)
        assert 3 not in dev.recommend(400).items
        assert dev.forget(3) == 1 and dev.forget(3) == 0
        assert 3 in dev.recommend(400).items and [r.item for r in dev.interactions()] == [9]
        dev.wipe()
        assert dev.interactions() == [] and dev.model_round == 1
        np.testing.assert_array_equal(dev.factor.user_factor, np.zeros(8))  # type: ignore[union-attr]


def test_model_must_verify_and_never_roll_back_even_after_reopen(tmp_path: Path) -> None:
    with _device(tmp_path, round_=5) as dev:
        other = Ed25519PrivateKey.generate()
        with pytest.raises(SignatureError, match="does not verify"):
            dev.load_model(sign_model(_table(), round_=6, run="t", signing_key=other))
        art = bytearray(sign_model(_table(), round_=6, run="t", signing_key=SIGNER))
        art[100] ^= 1
        with pytest.raises(SignatureError):
            dev.load_model(bytes(art))
    with _device(tmp_path, round_=None) as dev:
        assert dev.model_round == 5
        with pytest.raises(RollbackError, match="round 4 is older than the round 5"):
            dev.load_model(sign_model(_table(), round_=4, run="t", signing_key=SIGNER))
        assert dev.load_model(sign_model(_table(), round_=7, run="t", signing_key=SIGNER)) == 7


def test_interactions_before_a_model_are_folded_in_when_it_arrives(tmp_path: Path) -> None:
    with _device(tmp_path, round_=None) as dev:
        with pytest.raises(ModelError, match="no model"):
            dev.recommend(3)
        dev.record(11, rating=5.0)
        dev.load_model(sign_model(_table(), round_=1, run="t", signing_key=SIGNER))
        assert np.abs(dev.factor.user_factor).sum() > 0  # type: ignore[union-attr]
        assert 11 not in dev.recommend(400).items


def test_bad_interactions_are_refused(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        with pytest.raises(ConfigError, match="exactly one"):
            dev.record(1)
        with pytest.raises(ConfigError, match="non-negative"):
            dev.record(-1, rating=3.0)
        with pytest.raises(ConfigError, match="non-finite"):
            dev.record(1, rating=float("nan"))


def test_privacy_spent_reads_the_accountants_in_the_store(tmp_path: Path) -> None:
    from fedrec.federated.device import save_accountant
    from fedrec.privacy.accounting import PrivacyAccountant

    acc = PrivacyAccountant("rdp", delta=1e-5)
    acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=50)
    with _device(tmp_path) as dev:
        assert dev.privacy_spent() == []
        state = dev.store.load()
        save_accountant(state, 0, acc.state_dict())
        dev.store.save(state)
        (report,) = dev.privacy_spent()
    assert report["unit"] == "rating" and report["epsilon"] == pytest.approx(acc.epsilon())


def test_supernode_command_line(tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path / "store.key", KEY)
    assert oct(key_file.stat().st_mode)[-3:] == "600"
    with _device(tmp_path) as dev:
        cmd = dev.supernode_command(superlink="10.0.0.1:9092", key_file=key_file, root_certificates="ca.pem",
                                    auth_key="node.key")
        assert cmd[1:7] == ["--superlink", "10.0.0.1:9092", "--root-certificates", "ca.pem",
                            "--auth-supernode-private-key", "node.key"]
        assert cmd[-1] == f'store="{(tmp_path / "u.fedrec").resolve()}" key-file="{key_file.resolve()}"'
        assert "--insecure" in dev.supernode_command(superlink="127.0.0.1:9092", key_file=key_file, insecure=True)
        with_identity = dev.supernode_command(superlink="10.0.0.1:9092", key_file=key_file, insecure=True,
                                              identity=tmp_path / "d.identity")
        assert with_identity[-1] == (f'store="{(tmp_path / "u.fedrec").resolve()}" key-file="{key_file.resolve()}" '
                                     f'secagg-identity="{(tmp_path / "d.identity").resolve()}"')
        floor = dev.supernode_command(superlink="10.0.0.1:9092", key_file=key_file, insecure=True, eval_min_cohort=8)
        assert floor[-1].endswith(" secagg-eval-min-cohort=8")
        for bad in (1, True, 2.5):
            with pytest.raises(ConfigError, match="eval_min_cohort must be an integer >= 2"):
                dev.supernode_command(superlink="x:1", key_file=key_file, insecure=True,
                                      eval_min_cohort=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="exactly one"):
            dev.supernode_command(superlink="x:1", key_file=key_file)
        with pytest.raises(DeployError, match="d.identity: identity folder not found"):
            dev.join(superlink="127.0.0.1:1", key_file=key_file, insecure=True, identity=tmp_path / "d.identity")
