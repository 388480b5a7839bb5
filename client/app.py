"""Flower ClientApp: the assembly of the device's handlers (mirrors ``server/app.py``).

* ``client/device.py`` — plain training and evaluation, the source providers and
  the training call both train paths share.
* ``client/secagg.py`` — the ``train.secagg`` handler of secure aggregation.
* ``client/secure_eval.py`` — the ``evaluate.secagg`` handler: evaluation through the secure sum.
* ``client/persist.py`` — the mod keeping simulated devices' state in the run's device-state table.
* ``client/records.py`` — Flower records to fedrec payloads and back, and the run configuration
  from ``context.run_config`` (the downlink carries only the round's facts).

``app`` is the component ``flwr run`` loads; :func:`make_client_app` builds a
ClientApp over another source of rows (the on-device store) or with Flower mods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedrec import wire
from fedrec.deploy.runspec import CONFIG_KEY, envelope
from fedrec.runconfig import RunConfig

from .device import EvaluateHandler, SourceProvider, TrainHandler, device_source
from .secagg import IdentityProvider, register_secagg, simulation_identities
from .secure_eval import register_secure_eval


def make_client_app(source: SourceProvider = device_source, *, mods: list[Mod] | None = None,
                    run_config: RunConfig | Sequence[RunConfig] | None = None,
                    seeded_noise: bool = False, identities: IdentityProvider | None = None) -> ClientApp:
    """A ClientApp whose devices read their rows through ``source``; ``mods`` are Flower client mods.

    Devices read the run's configuration from ``context.run_config``, where
    ``flwr run`` puts it. Flower's in-process simulation (``run_simulation``)
    gives ClientApps an empty one, so a simulated run passes its ``run_config``
    here and a :class:`RunConfigMod` hands it to every device (a benchmark that
    switches between configurations within one simulation passes them all).

    ``seeded_noise`` (simulations only) makes DP noise a function of the run's
    seed (:func:`~.device.train_device`); the deployed ``app`` leaves it off.

    ``identities``: where simulated devices get their certified identities (the
    simulation runner passes its authority, whose public key the server gets
    too); a fresh simulation authority when omitted. Deployed devices read
    theirs from their identity folder either way.
    """
    configs = [run_config] if isinstance(run_config, RunConfig) else list(run_config or [])
    outer: list[Mod] = [RunConfigMod.of(configs)] if configs else []
    app = ClientApp(mods=[*outer, *(mods or [])])
    app.train()(TrainHandler(source, seeded_noise=seeded_noise))
    app.evaluate()(EvaluateHandler(source))
    identities = identities or simulation_identities()  # one authority for both kinds of secure round
    register_secagg(app, source, identities, seeded_noise=seeded_noise)
    register_secure_eval(app, source, identities)
    return app


@dataclass(frozen=True)
class RunConfigMod:
    """A client mod handing the handlers a ``context.run_config`` holding the run's configuration (``deploy.config``).

    For the in-process simulation, whose ClientApps Flower gives an empty run
    configuration; deployed devices get theirs from ``flwr run`` and use no
    such mod. With several configurations, the one whose digest the message's
    downlink names. A module-level class: the simulation pickles the app,
    mods included, with every message.
    """

    packed: tuple[tuple[str, str], ...]
    """``(digest, deploy.config JSON)`` of each configuration."""

    @classmethod
    def of(cls, configs: Sequence[RunConfig]) -> RunConfigMod:
        return cls(tuple((cfg.digest, envelope(cfg, resume=False)[CONFIG_KEY]) for cfg in configs))

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        chosen: str | None = self.packed[0][1]
        if len(self.packed) > 1:
            record = msg.content.config_records.get(wire.RECORD_CONFIG)
            chosen = dict(self.packed).get(str(record.get(wire.CFG_RUN_DIGEST))) if record is not None else None
        if chosen is None:
            return call_next(msg, context)
        # Flower refuses a changed context.run_config, so the handlers get a view that shares the rest
        # (node config, and the state they update in place).
        view = Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                       state=context.state, run_config={**context.run_config, CONFIG_KEY: chosen})
        return call_next(msg, view)


app = make_client_app()
