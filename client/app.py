"""Flower ClientApp: the assembly of the device's handlers (mirrors ``server/app.py``).

* ``client/device.py`` — plain training and evaluation, the source providers and
  the training call both train paths share.
* ``client/secagg.py`` — the ``train.secagg`` handler of secure aggregation.
* ``client/secure_eval.py`` — the ``evaluate.secagg`` handler: evaluation through the secure sum.
* ``client/persist.py`` — the mod keeping simulated devices' state in the run's device-state table.
* ``client/records.py`` — Flower records to fedrec payloads and back.

``app`` is the component ``flwr run`` loads; :func:`make_client_app` builds a
ClientApp over another source of rows (the on-device store) or with Flower mods.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from .device import EvaluateHandler, SourceProvider, TrainHandler, device_source
from .secagg import register_secagg, simulation_identities
from .secure_eval import register_secure_eval


def make_client_app(source: SourceProvider = device_source, *, mods: list[Mod] | None = None,
                    seeded_noise: bool = False) -> ClientApp:
    """A ClientApp whose devices read their rows through ``source``; ``mods`` are Flower client mods.

    ``seeded_noise`` (simulations only) makes DP noise a function of the run's
    seed (:func:`~.device.train_device`); the deployed ``app`` leaves it off.
    """
    app = ClientApp(mods=mods)
    app.train()(TrainHandler(source, seeded_noise=seeded_noise))
    app.evaluate()(EvaluateHandler(source))
    identities = simulation_identities()  # one authority for both kinds of secure round
    register_secagg(app, source, identities, seeded_noise=seeded_noise)
    register_secure_eval(app, source, identities)
    return app


app = make_client_app()
