"""Device side of evaluation under secure aggregation: the ``evaluate.secagg`` handler.

An evaluation round is a secure-aggregation round of its own (setup, share,
mask, unmask), answered by the same protocol code as training
(:func:`fedrec.secagg.handle_secagg_parts`), whose masked vector holds the
device's metric sums and counts (:mod:`fedrec.metrics.secure_sum`) instead of
an update. Its protocol state lives in its own record of ``Context.state``
(``wire.STATE_EVAL_SECAGG``), apart from the training rounds', so the two
never interfere; the device's training state is only read.

The reply carries the parts' answers and nothing else: no metric, no count.
A device refuses the mask stage of an evaluation round whose threshold or
cohort is below ``secagg.eval-min-cohort``: the server could otherwise
unmask the sums of a handful of devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedrec import wire
from fedrec.errors import SecAggError
from fedrec.federated.device import device_evaluate
from fedrec.metrics.secure_sum import eval_segments
from fedrec.secagg import handle_secagg_parts

from .device import SourceProvider
from .records import load_state, parse_downlink
from .secagg import IdentityProvider, answer_content, message_parts

#: Key, in the evaluation protocol state, of the latest setup's (threshold, cohort size).
_SETUP_SIZE = "fedrec.eval.setup"


def register_secure_eval(app: ClientApp, source: SourceProvider, identities: IdentityProvider) -> None:
    """Register the secure evaluation handler (message type ``evaluate.secagg``) on ``app``.

    ``identities`` is the training handler's: evaluation rounds authenticate
    devices exactly as training rounds do (identity folder, or the simulation
    authority for simulated devices only).
    """
    category, action = wire.MSG_SECAGG_EVAL.split(".")
    assert category == "evaluate"
    app.evaluate(action)(SecureEvalHandler(source, identities))


@dataclass(frozen=True)
class SecureEvalHandler:
    """Answer every part of an ``evaluate.secagg`` message (a module-level class: cheap to pickle)."""

    source: SourceProvider
    identities: IdentityProvider

    def __call__(self, msg: Message, context: Context) -> Message:
        parts = message_parts(msg)
        state = load_eval_state(context)
        setup = parts.get(wire.SECAGG_SETUP)
        if setup is not None:
            size = [int(setup.get("threshold", 0)), len(setup.get("participants", ()))]
            state[_SETUP_SIZE] = np.array(size, np.int64)
        segments = self._evaluator(msg, context, state) if wire.SECAGG_MASK in parts else None
        try:
            trust = self.identities(context)
            answer = handle_secagg_parts(parts, state, node_id=context.node_id, trust=trust, segments=segments)
        finally:
            save_eval_state(context, state)
        return Message(answer_content(answer), reply_to=msg)

    def _evaluator(self, msg: Message, context: Context,
                   state: dict[str, np.ndarray]) -> Callable[[], dict[str, np.ndarray]]:
        """``segments()`` for the mask part: the device's metric sums on the downlink table, as the eval layout."""

        def segments() -> dict[str, np.ndarray]:
            down = parse_downlink(msg)
            cfg = down.cfg
            threshold, cohort = (int(v) for v in state.get(_SETUP_SIZE, np.zeros(2, np.int64)))
            minimum = cfg.secagg.eval_min_cohort
            if threshold < minimum or cohort < minimum:
                raise SecAggError(f"evaluation round with threshold {threshold} among {cohort} devices: below "
                                  f"secagg.eval-min-cohort = {minimum}, refused")
            scale = down.rating_scale
            sums = device_evaluate(self.source(context, cfg), load_state(context), down.glob, model=cfg.model,
                                   local=cfg.fed.local, scale=scale, seed=cfg.fed.seed, privacy=cfg.privacy_plan())
            return eval_segments(sums, kind=cfg.model.kind, rating_scale=scale,
                                 users_per_client=cfg.data.users_per_client)

        return segments


def load_eval_state(context: Context) -> dict[str, Any]:
    """The evaluation rounds' protocol state (a record of its own in ``Context.state``)."""
    record = context.state.array_records.get(wire.STATE_EVAL_SECAGG)
    return {k: wire.npy_array(v.data) for k, v in record.items()} if record is not None else {}


def save_eval_state(context: Context, state: dict[str, np.ndarray]) -> None:
    context.state[wire.STATE_EVAL_SECAGG] = ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
