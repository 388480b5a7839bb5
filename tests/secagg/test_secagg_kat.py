"""Known-answer vectors for fedrec's own secure-aggregation formats.

Each layout is pinned twice: rebuilt field by field from its documented
layout with ``cryptography``/``hashlib`` directly (so the documentation and the
code agree), and as hex (so a silent change of the format, or a dependency
upgrade that moves an output, fails here first).
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrec.secagg import QuantConfig, SegmentSpec, Setup
from fedrec.secagg.crypto.identity import SimulationAuthority, advert_digest, advert_statement
from fedrec.secagg.crypto.keys import _associated_data, bind_model, encrypt_shares, mask_seed, share_key
from fedrec.secagg.crypto.prg import DOMAIN_PAIR, expand
from fedrec.secagg.crypto.shamir import element_to_bytes
from fedrec.secagg.device_state import pack, unpack
from fedrec.secagg.graph import graph_seed
from fedrec.secagg.layout import model_digest
from fedrec.secagg.messages import setup_digest

SHARED = bytes(range(32))


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def test_hkdf_info_layouts() -> None:
    """share key: ``b"fedrec-secagg share|" || round u64``; mask seed adds ``low u64 || high u64``;
    the model binding is ``b"fedrec-secagg mask model v1\\0" || digest``."""
    assert share_key(SHARED, round_id=5) == hkdf(SHARED, b"fedrec-secagg share|" + struct.pack(">Q", 5))
    seed = mask_seed(SHARED, round_id=5, a=9, b=3)
    assert seed == mask_seed(SHARED, round_id=5, a=3, b=9)
    assert seed == hkdf(SHARED, b"fedrec-secagg mask|" + struct.pack(">QQQ", 5, 3, 9))
    digest = bytes(range(32, 64))
    assert bind_model(seed, model_digest=digest) == hkdf(seed, b"fedrec-secagg mask model v1\x00" + digest)
    assert share_key(SHARED, round_id=5).hex() == "fd0b04f37e3607244d8b5c9cf33851a1c21e50c9d3123be92dc851c714b71a20"
    assert seed.hex() == "47b7620e8265b65d3c094523edf2d17a656a53e339bfd3ccb56bd8aefc2aab9c"


def test_mask_derivation_vector() -> None:
    """The pairwise mask stream: ChaCha20 keyed by the model-bound seed (round 5, pair 3-9)."""
    key = bind_model(mask_seed(SHARED, round_id=5, a=9, b=3), model_digest=bytes(range(32, 64)))
    assert key.hex() == "3236c98f9db6703feca46515b3bd68629bddcb8981ddd7328e6a54bbf32d080e"
    stream = expand(key, 4, dtype=np.uint32, round_id=5, domain=DOMAIN_PAIR)
    assert stream.tolist() == [3429973130, 402362918, 3273556510, 2565752515]


def test_aes_gcm_associated_data_layout() -> None:
    """AD = ``b"fedrec-s" || round u64 || stage u8 (2) || sender u64 || receiver u64``; plaintext repeats the ids."""
    ad = b"fedrec-s" + struct.pack(">QBQQ", 5, 2, 1, 2)
    assert _associated_data(5, 1, 2) == ad
    ct = encrypt_shares(bytes(32), round_id=5, sender=1, receiver=2, seed_share=7, key_share=11, nonce=bytes(12))
    plain = AESGCM(bytes(32)).decrypt(ct[:12], ct[12:], ad)
    assert plain == struct.pack(">QQ", 1, 2) + element_to_bytes(7) + element_to_bytes(11)
    assert hashlib.sha256(ct).hexdigest() == "577efdbf185b88bbfa578572a580b89b209f8faa16a1f89458a6bc35427dcd3a"


CERT_7 = ("465243310000000000000007a6e2c9b9d291c6537c475abad7d8571385523922832549ffbd8f8c45701c89ced5ca7b42"
          "890c06ec064d1c2b2e9a6eb8d23b4e625be541349ff80fa87684167a4576674c9de004628b2fa04716feb7a250b8c24f8bad9e"
          "3a4ab4daf12004d00b")


def test_certificate_and_signed_advertisement_vectors() -> None:
    authority = SimulationAuthority(b"\x01" * 32)
    identity = authority.identity(7)
    cert = identity.certificate.to_bytes()
    assert authority.public_key.hex() == "05b44eb1c7748baec96750f3ee847d829d5d3f77156aa47fba20e2dc8ab56d27"
    assert cert.hex() == CERT_7
    assert cert[:12] == b"FRC1" + struct.pack(">Q", 7) and len(cert) == 108
    Ed25519PublicKey.from_public_bytes(authority.public_key).verify(
        cert[44:], b"fedrec-secagg certificate v1\x00" + struct.pack(">Q", 7) + cert[12:44])
    keys = {"c_pk": b"\x02" * 32, "s_pk": b"\x03" * 32, "setup_digest": b"\x04" * 32}
    statement = advert_statement(round_id=5, node_id=9, certificate=cert, **keys)
    assert statement == (b"fedrec-secagg advertise v1\x00" + struct.pack(">QBQ", 5, 1, 9) + b"\x02" * 32
                         + b"\x03" * 32 + b"\x04" * 32 + cert)
    signature = identity.sign_advert(round_id=5, node_id=9, **keys)
    Ed25519PublicKey.from_public_bytes(cert[12:44]).verify(signature, statement)
    assert signature.hex() == ("911e9dde226a25e31a692898eb1a2b0079725f101a9ef5636e34e92df779b20d"
                               "0f5f11740e351f687c9f9e9d268d97104252b843d351b67506186ae2bf7c4602")
    assert advert_digest(statement, signature) == hashlib.sha256(statement + signature).digest()
    assert advert_digest(statement, signature).hex() == (
        "f63a4a9fbc9ad5259c090fe028560d1cf7c4b720168c889bf46f410069338b34")


def test_graph_seed_layout() -> None:
    adverts = {3: b"\x05" * 32, 1: b"\x06" * 32}
    want = hashlib.sha256(b"fedrec-secagg graph v1\x00" + struct.pack(">Q", 5) + bytes(32) + struct.pack(">Q", 2)
                          + struct.pack(">Q", 1) + b"\x06" * 32 + struct.pack(">Q", 3) + b"\x05" * 32).digest()
    got = graph_seed(round_id=5, server_nonce=bytes(32), adverts=adverts)
    assert got == want
    assert got.hex() == "4123be8f0aee4562462cba6f3fefbd5bb0fda811a71c0123705c839e4693fe1b"


def test_downlink_digest_layout() -> None:
    arrays = {"item_factors": np.zeros((2, 1), np.float32), "item_bias": np.array([0.5, -1.0])}
    config = {"round": 3, "fedrec.run.x": 0.25, "flag": True}

    def framed(data: bytes) -> bytes:
        return struct.pack(">Q", len(data)) + data

    body = framed(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        arr = arrays[name]
        body += framed(name.encode()) + framed(arr.dtype.str.encode()) + framed(json.dumps(list(arr.shape)).encode())
        body += framed(arr.tobytes())
    got = model_digest(arrays, config)
    assert got == hashlib.sha256(b"fedrec-secagg downlink v1\x00" + body).digest()
    assert got.hex() == "d2bca2418be6d40b54e1b8229880e5f879dea0d561a31fdf03d4c75066aae56a"
    assert model_digest(arrays, {**config, "round": 4}) != got


def test_setup_digest_layout() -> None:
    quant = QuantConfig(segments=(SegmentSpec.symmetric("x", 2, clip=1.0, scale=4.0),))
    setup = Setup(round_id=1, participants=(1, 2, 3), threshold=2, degree=None, graph_seed=bytes(32), quant=quant)
    form = {k: v.hex() if isinstance(v, bytes) else v for k, v in setup.to_dict().items()}
    text = json.dumps(form, sort_keys=True, separators=(",", ":")).encode()
    assert setup_digest(setup) == hashlib.sha256(b"fedrec-secagg setup v1\x00" + text).digest()


def test_packed_device_state_format() -> None:
    """``u32 header length || JSON [[name, dtype, shape], ...] || raw bytes`` (one array per round in the state)."""
    arrays = {"secagg.a": np.array([1, 2], np.uint8), "secagg.b": np.array([3], np.uint64)}
    blob = pack(arrays).tobytes()
    header = b'[["secagg.a","|u1",[2]],["secagg.b","<u8",[1]]]'
    assert blob == struct.pack(">I", len(header)) + header + b"\x01\x02" + struct.pack("<Q", 3)
    assert blob.hex() == ("0000002f5b5b227365636167672e61222c227c7531222c5b325d5d2c5b227365636167672e62222c223c"
                          "7538222c5b315d5d5d01020300000000000000")
    back = unpack(np.frombuffer(blob, np.uint8))
    assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
