"""Flower ClientApp: the assembly of the device's handlers (mirrors ``server/app.py``).

* ``client/device.py`` — plain training and evaluation, the source providers and
  the training call both train paths share.
* ``client/secagg.py`` — the ``train.secagg`` handler of secure aggregation.
* ``client/records.py`` — Flower records to fedrec payloads and back.

``app`` is the component ``flwr run`` loads; :func:`make_client_app` builds a
ClientApp over another source of rows (the on-device store) or with Flower mods.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from .device import EvaluateHandler, SourceProvider, TrainHandler, simulation_source
from .secagg import register_secagg


def make_client_app(source: SourceProvider = simulation_source, *, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp whose devices read their rows through ``source``; ``mods`` are Flower client mods."""
    app = ClientApp(mods=mods)
    app.train()(TrainHandler(source))
    app.evaluate()(EvaluateHandler(source))
    register_secagg(app, source)
    return app


app = make_client_app()
