"""Device side of evaluation under secure aggregation: the ``evaluate.secagg`` handler.

An evaluation round is a secure-aggregation round of its own (setup, share,
mask, unmask), answered by the same protocol code as training
(:func:`fedrec.secagg.handle_secagg_parts`), whose masked vector holds the
device's metric sums and counts (:mod:`fedrec.metrics.secure_sum`) instead of
an update. Its protocol state lives in its own record of ``Context.state``
(``wire.STATE_EVAL_SECAGG``), apart from the training rounds', so the two
never interfere; the device's training state is only read.

The reply carries the parts' answers and nothing else: no metric, no count.
A device refuses an evaluation round whose threshold or cohort is below its
own floor (:func:`device_eval_floor`): the server could otherwise unmask the
sums of a handful of devices. The floor is the device's, not the server's:
the node config key ``secagg-eval-min-cohort`` (set by whoever starts the
SuperNode: ``fedrec device join --eval-min-cohort``, ``Device.join(eval_min_cohort=)``),
else the app's :data:`DEFAULT_EVAL_FLOOR`. The run configuration's
``secagg.eval-min-cohort`` can only raise it. The setup is refused before the
device advertises a key, and the mask stage checks again before it evaluates.
A device of Flower's simulation engine (node config ``partition-id`` and
``num-partitions``) with no floor of its own takes the run configuration's,
because there the simulation's owner configures both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedrec import wire
from fedrec.errors import SecAggConfigError
from fedrec.federated.device import device_evaluate
from fedrec.metrics.secure_sum import eval_segments
from fedrec.secagg import handle_secagg_parts

from .device import SourceProvider
from .records import load_state, parse_downlink
from .secagg import IdentityProvider, answer_content, message_parts

#: Key, in the evaluation protocol state, of the latest setup's (threshold, cohort size).
_SETUP_SIZE = "fedrec.eval.setup"
#: The fewest devices a deployed device lets the server unmask its evaluation sums with, when its node
#: config sets no ``secagg-eval-min-cohort`` (part of the app the device runs, not of the server's downlink).
DEFAULT_EVAL_FLOOR = 5
#: Below this a "sum" is one device's own values.
_LOWEST_FLOOR = 2


def device_eval_floor(context: Context) -> int | None:
    """The device's own floor for a secure evaluation's threshold and cohort, or None for a simulated device.

    Returns the node config's ``secagg-eval-min-cohort`` when set, else
    :data:`DEFAULT_EVAL_FLOOR`; None for a device of Flower's simulation
    engine that sets none (the run configuration's value applies there).

    Raises
    ------
    SecAggConfigError
        The node config value is not an integer of at least 2 (the key is named).
    """
    value = context.node_config.get(wire.NODE_EVAL_MIN_COHORT)
    if value is None:
        simulated = wire.NODE_PARTITION_ID in context.node_config and wire.NODE_NUM_PARTITIONS in context.node_config
        return None if simulated else DEFAULT_EVAL_FLOOR
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < _LOWEST_FLOOR:
        raise SecAggConfigError(f"node config {wire.NODE_EVAL_MIN_COHORT!r}: must be an integer >= {_LOWEST_FLOOR}, "
                                f"got {value!r}")
    return value


def check_eval_size(threshold: int, cohort: int, *, floor: int, where: str) -> None:
    """Refuse an evaluation round whose threshold or cohort is below ``floor`` (``where`` names the floor's source).

    Raises
    ------
    SecAggConfigError
        ``threshold`` or ``cohort`` is below ``floor``.
    """
    if threshold < floor or cohort < floor:
        raise SecAggConfigError(f"evaluation round with threshold {threshold} among {cohort} devices: below "
                                f"{where} = {floor}, refused")


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
        floor = device_eval_floor(context)
        state = load_eval_state(context)
        setup = parts.get(wire.SECAGG_SETUP)
        if setup is not None:
            size = [_count(setup.get("threshold", 0)), len(set(setup.get("participants", ())))]  # distinct ids
            if floor is not None:  # before any key is advertised: the round never starts on this device
                check_eval_size(size[0], size[1], floor=floor, where=f"this device's {wire.NODE_EVAL_MIN_COHORT}")
            state[_SETUP_SIZE] = np.array(size, np.int64)
        segments = self._evaluator(msg, context, state, floor) if wire.SECAGG_MASK in parts else None
        try:
            trust = self.identities(context)
            answer = handle_secagg_parts(parts, state, node_id=context.node_id, trust=trust, segments=segments)
        finally:
            save_eval_state(context, state)
        return Message(answer_content(answer), reply_to=msg)

    def _evaluator(self, msg: Message, context: Context, state: dict[str, np.ndarray],
                   floor: int | None) -> Callable[[], dict[str, np.ndarray]]:
        """``segments()`` for the mask part: the device's metric sums on the downlink table, as the eval layout."""

        def segments() -> dict[str, np.ndarray]:
            down = parse_downlink(msg, context)
            cfg = down.cfg
            threshold, cohort = (int(v) for v in state.get(_SETUP_SIZE, np.zeros(2, np.int64)))
            if floor is not None:
                check_eval_size(threshold, cohort, floor=floor, where=f"this device's {wire.NODE_EVAL_MIN_COHORT}")
            check_eval_size(threshold, cohort, floor=cfg.secagg.eval_min_cohort, where="secagg.eval-min-cohort")
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


def _count(value: Any) -> int:
    """A setup's announced threshold as an int (anything else counts as 0, which every floor refuses)."""
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else 0
