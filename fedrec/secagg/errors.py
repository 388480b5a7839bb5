"""Typed refusals of the secure-aggregation core.

Every class derives from :class:`fedrec.errors.SecAggError`, so a caller that
only wants to know "the round or message was refused" catches that one type;
the sub-class says which rule was broken.
"""

from __future__ import annotations

from fedrec.errors import SecAggAbort, SecAggError

__all__ = [
    "SecAggAbort",
    "SecAggConfigError",
    "SecAggError",
    "SecAggIntegrityError",
    "SecAggMessageError",
    "SecAggProtocolError",
]


class SecAggConfigError(SecAggError):
    """Round settings cannot work (threshold, graph degree, ring too small)."""


class SecAggMessageError(SecAggError):
    """A message is malformed: wrong type, length, dtype, id or value range."""


class SecAggIntegrityError(SecAggError):
    """A ciphertext or key failed authentication (tampered, replayed, misrouted)."""


class SecAggProtocolError(SecAggError):
    """A request an honest party refuses: out of order, inconsistent or repeated."""
