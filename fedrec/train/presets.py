"""Default hyper-parameters per evaluation protocol.

Chosen on validation splits carved from the training data (never on test
items): for E1 a random 10% of each user's ``u1.base`` ratings
(``python -m simulations.tune_e1``), for R1 each user's second-to-last
interaction, leave-last-out applied to train (``python -m simulations.tune_r1``). The
search and its numbers are in README ("How the defaults were chosen").
"""

from __future__ import annotations

from fedrec.model.mf import MFConfig
from fedrec.train.aggregate import ServerOptConfig
from fedrec.train.central import CentralConfig
from fedrec.train.federated import FedConfig
from fedrec.train.local import LocalConfig

MODEL_PRESETS: dict[str, MFConfig] = {
    "E1": MFConfig(kind="explicit", dim=32, reg=0.12, bias_reg=0.12),
    "R1": MFConfig(kind="implicit", dim=32, reg=0.02, bias_reg=0.01, negatives=16, neg_weight=16.0,
                   recency_boost=4.0, recency_scale=5.0),
}

CENTRAL_PRESETS: dict[str, CentralConfig] = {
    "E1": CentralConfig(epochs=60, lr=0.005, batch_size=512),
    "R1": CentralConfig(epochs=40, lr=0.01, batch_size=512),
}

# The ALS trainers (fedrec.train.als), chosen on the same validation splits (python -m
# simulations.tune_e1 --als; python -m simulations.tune_implicit). E1: biased MF by ALS; R1: the
# weighted full-catalogue implicit loss ("wrmf"), whose negatives are the whole catalogue.
ALS_PRESETS: dict[str, tuple[MFConfig, CentralConfig]] = {
    "E1": (MFConfig(kind="explicit", dim=64, reg=0.14, bias_reg=0.12), CentralConfig(epochs=15, solver="als")),
    "R1": (MFConfig(kind="implicit", loss="wrmf", dim=64, reg=1.0, confidence=10.0, recency_boost=4.0,
                    recency_scale=5.0), CentralConfig(epochs=15, solver="als")),
}

FED_PRESETS: dict[str, FedConfig] = {
    "R1": FedConfig(rounds=140, cohort=1.0, averaging="item", eval_every=20,
                    local=LocalConfig(steps=2, lr=0.6, user_lr=1.0, fold_in=False),
                    server=ServerOptConfig(name="adam", lr=0.05)),
}
