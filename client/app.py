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
from .secagg import IdentityProvider, register_secagg, simulation_identities
from .secure_eval import register_secure_eval


def make_client_app(source: SourceProvider = device_source, *, mods: list[Mod] | None = None,
                    identities: IdentityProvider | None = None) -> ClientApp:
    """A ClientApp whose devices read their rows through ``source``; ``mods`` are Flower client mods.

    ``identities``: where simulated devices get their certified identities (the
    simulation runner passes its authority, whose public key the server gets
    too); a fresh simulation authority when omitted. Deployed devices read
    theirs from their identity folder either way.
    """
    app = ClientApp(mods=mods)
    app.train()(TrainHandler(source))
    app.evaluate()(EvaluateHandler(source))
    identities = identities or simulation_identities()  # one authority for both kinds of secure round
    register_secagg(app, source, identities)
    register_secure_eval(app, source, identities)
    return app


app = make_client_app()
