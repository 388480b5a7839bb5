"""Helpers shared by the secure-aggregation device tests."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedrec.secagg import check_payload


def wire(payload: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
    """A payload as it comes out of a record: plain values only, nothing shared with the sender.

    ``check=False`` lets a deliberately malformed payload through to the device under test.
    """
    if check:
        check_payload(payload)
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, value, allow_pickle=False)
            buffer.seek(0)
            out[key] = np.load(buffer, allow_pickle=False)
        elif isinstance(value, list):
            out[key] = [type(v)(v) for v in value]
        else:
            out[key] = value
    return out


def stored(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.array(value, copy=True) for key, value in state.items()}
