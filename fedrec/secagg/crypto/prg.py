"""Mask expansion: a 256-bit key stretched into a vector over Z_{2^b}.

ChaCha20 (RFC 8439, from ``cryptography``) encrypting zeros yields its
keystream, which numpy reinterprets as little-endian ``uint32`` or ``uint64``
words without a copy. The 16-byte ``cryptography`` nonce is the 32-bit block
counter (little-endian, starting at 0) followed by the 96-bit RFC nonce; here
the RFC nonce is a 4-byte domain tag and the 64-bit round id, so the same key
used for two purposes or in two rounds never yields the same stream.

The zeros it encrypts come from one shared, immutable buffer: allocating a
fresh zeroed input for every mask (and touching its pages) costs several
times the ChaCha20 work itself on vectors of a few hundred kilobytes.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedrec.errors import SecAggConfigError

__all__ = [
    "DOMAIN_GRAPH",
    "DOMAIN_PAIR",
    "DOMAIN_SELF",
    "KEY_BYTES",
    "expand",
    "keystream",
    "nonce_for",
]

KEY_BYTES = 32
DOMAIN_SELF = b"self"
"""Tag of a client's self mask PRG(b)."""
DOMAIN_PAIR = b"pair"
"""Tag of a pairwise mask PRG(s_ij)."""
DOMAIN_GRAPH = b"grph"
"""Tag of the neighbourhood-graph permutation stream."""

_MAX_ROUND = (1 << 64) - 1
_ZEROS = [b""]


def _zeros(nbytes: int) -> memoryview:
    """``nbytes`` zero bytes, a view of a shared buffer grown on demand (never written)."""
    if len(_ZEROS[0]) < nbytes:
        _ZEROS[0] = bytes(max(nbytes, 2 * len(_ZEROS[0])))
    return memoryview(_ZEROS[0])[:nbytes]


def keystream(key: bytes, nonce: bytes, nbytes: int) -> bytes:
    """Raw ChaCha20 keystream of ``nbytes`` for a 32-byte key and 16-byte nonce."""
    if len(key) != KEY_BYTES:
        raise SecAggConfigError(f"PRG key must be {KEY_BYTES} bytes")
    if len(nonce) != 16:
        raise SecAggConfigError("ChaCha20 nonce must be 16 bytes (counter + nonce)")
    if nbytes < 0:
        raise SecAggConfigError("keystream length must be non-negative")
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    return encryptor.update(_zeros(nbytes))


def nonce_for(round_id: int, domain: bytes) -> bytes:
    """Counter 0, then the domain tag and the round id (the RFC 8439 nonce)."""
    if len(domain) != 4:
        raise SecAggConfigError("PRG domain tag must be 4 bytes")
    if not 0 <= round_id <= _MAX_ROUND:
        raise SecAggConfigError("round id must fit in 64 bits")
    return bytes(4) + domain + round_id.to_bytes(8, "big")


def expand(
    key: bytes,
    length: int,
    *,
    dtype: np.dtype[np.unsignedinteger] | type[np.unsignedinteger],
    round_id: int,
    domain: bytes,
) -> np.ndarray:
    """``length`` pseudorandom words of ``dtype`` (uint32 or uint64) from ``key``.

    The result is read-only (a view of the keystream buffer); callers add it
    into their own accumulator.
    """
    word = np.dtype(dtype)
    if word not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise SecAggConfigError(f"PRG dtype must be uint32 or uint64, got {word}")
    stream = keystream(key, nonce_for(round_id, domain), length * word.itemsize)
    return np.frombuffer(stream, dtype=word.newbyteorder("<")).astype(word, copy=False)
