"""The cryptography of secure aggregation, composed from ``cryptography``'s primitives only.

:mod:`~fedrec.secagg.crypto.shamir` (Shamir sharing over GF(2^521 - 1)),
:mod:`~fedrec.secagg.crypto.keys` (X25519, HKDF, AES-GCM share encryption),
:mod:`~fedrec.secagg.crypto.prg` (ChaCha20 mask expansion) and
:mod:`~fedrec.secagg.crypto.identity` (Ed25519 device identities, certificates
and signed key advertisements).
"""
