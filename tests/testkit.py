"""Helpers shared by several test folders: a recording Flower grid, the Opacus epsilon reference, a byte chi-square.

``tests/`` is on ``sys.path`` (its ``conftest.py``), so any test imports this module as ``testkit``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from opacus.accountants import IAccountant, RDPAccountant


class RecordingGrid:
    """A Grid that keeps every reply a device sent (what actually crossed the wire)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.replies: list[Message] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies


def opacus_epsilon(phases: list[tuple[float, float, int]], delta: float, *,
                   accountant: type[IAccountant] = RDPAccountant) -> float:
    """Epsilon of ``(sigma, q, steps)`` phases by a plain Opacus accountant stepped one invocation at a time.

    The independent reference fedrec's accounting and calibration are checked against.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = accountant()
        for sigma, q, steps in phases:
            for _ in range(steps):
                acc.step(noise_multiplier=sigma, sample_rate=q)
        return float(acc.get_epsilon(delta=delta))


def chi_square(data: bytes) -> float:
    """Pearson's statistic of the byte histogram against uniform (255 degrees of freedom; ~255 for random bytes)."""
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())
