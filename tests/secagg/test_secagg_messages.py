"""Wire messages: to_dict/from_dict round trips, validation, Flower record fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedrec.errors import SecAggMessageError
from fedrec.secagg.crypto.identity import CERTIFICATE_BYTES, SIGNATURE_BYTES
from fedrec.secagg.crypto.keys import CIPHERTEXT_BYTES
from fedrec.secagg.crypto.shamir import ELEMENT_BYTES, PRIME
from fedrec.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    PeerKeys,
    RoutedShares,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    coerce,
    payload_size,
)
from fedrec.secagg.quantize import QuantConfig, SegmentSpec

BIG = 2**64 - 1
QUANT = QuantConfig(
    segments=(
        SegmentSpec.symmetric("emb", 6, clip=1.0, scale=2.0**20),
        SegmentSpec("count", 2, lo=0.0, hi=4.0, scale=2.0**10),
    )
)


def all_messages() -> list[Any]:
    ct = bytes(CIPHERTEXT_BYTES)
    share = (PRIME - 1).to_bytes(ELEMENT_BYTES, "big")
    cert = bytes(CERTIFICATE_BYTES)
    return [
        Setup(
            round_id=9,
            participants=(1, 5, BIG),
            threshold=2,
            degree=None,
            graph_seed=bytes(32),
            quant=QUANT,
        ),
        Setup(
            round_id=0,
            participants=(1, 2, 3, 4),
            threshold=2,
            degree=2,
            graph_seed=b"\x01" * 32,
            quant=QUANT,
        ),
        AdvertiseKeys(round_id=9, node_id=BIG, c_pk=b"\x01" * 32, s_pk=b"\x02" * 32, certificate=cert,
                      signature=b"\x03" * SIGNATURE_BYTES),
        PeerKeys(
            round_id=9,
            node_id=1,
            peers=(5, BIG),
            c_pks=(b"a" * 32, b"b" * 32),
            s_pks=(b"c" * 32, b"d" * 32),
            certificates=(cert, cert),
            signatures=(b"e" * SIGNATURE_BYTES, b"f" * SIGNATURE_BYTES),
            advertisers=(1, 5, BIG),
            digests=(b"g" * 32, b"h" * 32, b"i" * 32),
        ),
        PeerKeys(round_id=9, node_id=1, peers=(), c_pks=(), s_pks=(), certificates=(), signatures=(),
                 advertisers=(), digests=()),
        ShareKeys(round_id=9, node_id=1, ids=(5, BIG), ciphertexts=(ct, ct)),
        RoutedShares(round_id=9, node_id=BIG, ids=(1,), ciphertexts=(ct,)),
        MaskedInput(round_id=9, node_id=1, masked=np.arange(8, dtype=np.uint32)),
        UnmaskRequest(round_id=9, node_id=1, survivors=(5,), dropped=(BIG,)),
        UnmaskResponse(
            round_id=9, node_id=1, survivors=(5,), seed_shares=(share,), dropped=(), key_shares=()
        ),
    ]


@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    data = message.to_dict()
    again = type(message).from_dict(data)
    if isinstance(message, MaskedInput):
        assert np.array_equal(again.masked, message.masked)
    else:
        assert again == message
    assert coerce(type(message), data) == again or isinstance(message, MaskedInput)
    assert payload_size(message) > 0


@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_values_fit_flower_records(message: Any) -> None:
    flwr_app = pytest.importorskip("flwr.app")
    serde = pytest.importorskip("flwr.common.serde")
    data = message.to_dict()
    arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
    config = {k: v for k, v in data.items() if k not in arrays}
    proto = serde.config_record_to_proto(flwr_app.ConfigRecord(config))
    restored: dict[str, Any] = dict(serde.config_record_from_proto(proto))
    if arrays:
        record = flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in arrays.items()})
        record = serde.array_record_from_proto(serde.array_record_to_proto(record))
        restored.update({k: record[k].numpy() for k in arrays})
    again = type(message).from_dict(restored)
    if isinstance(message, MaskedInput):
        assert np.array_equal(again.masked, message.masked)
        assert again.masked.dtype == message.masked.dtype
    else:
        assert again == message


def mutated(message: Any, **changes: Any) -> dict[str, Any]:
    data = message.to_dict()
    data.update(changes)
    return data


def test_missing_and_unknown_keys_are_rejected() -> None:
    msg = all_messages()[2]
    data = msg.to_dict()
    del data["s_pk"]
    with pytest.raises(SecAggMessageError, match="missing keys \\['s_pk'\\]"):
        AdvertiseKeys.from_dict(data)
    with pytest.raises(SecAggMessageError, match="unknown keys \\['extra'\\]"):
        AdvertiseKeys.from_dict(mutated(msg, extra=1))
    with pytest.raises(SecAggMessageError, match="expected a mapping"):
        AdvertiseKeys.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("index", "changes", "pattern"),
    [
        (2, {"round_id": True}, "must be an int"),
        (2, {"round_id": -1}, "outside"),
        (2, {"node_id": 2**64}, "outside"),
        (2, {"node_id": "7"}, "must be an int"),
        (2, {"c_pk": b"\x01" * 31}, "32 bytes"),
        (2, {"s_pk": "x" * 32}, "must be bytes"),
        (3, {"peers": [5, 5]}, "duplicate"),
        (3, {"peers": [5]}, "equal lengths"),
        (3, {"digests": [b"g" * 32]}, "equal lengths"),
        (3, {"signatures": [b"e" * 63, b"f" * 64]}, "64 bytes"),
        (2, {"certificate": b"x" * 107}, "108 bytes"),
        (5, {"ciphertexts": [b"x", b"y"]}, "bytes"),
        (7, {"masked": np.arange(8, dtype=np.int64)}, "dtype int64"),
        (7, {"masked": np.zeros((2, 4), dtype=np.uint32)}, "1-D"),
        (7, {"masked": [1, 2, 3]}, "numpy array"),
        (8, {"survivors": [1, 1]}, "duplicate"),
        (9, {"seed_shares": [b"\x00" * 65]}, "66 bytes"),
        (0, {"threshold": 4}, "threshold"),
        (0, {"participants": [5, 1, 7]}, "sorted"),
        (0, {"neighbourhood": "some"}, "neighbourhood"),
        (0, {"segment_lengths": [6]}, "equal lengths"),
        (0, {"segment_scales": [2.0**40, 2.0**10]}, "could wrap"),
        (0, {"graph_seed": b"\x00" * 31}, "32 bytes"),
        (1, {"degree": 3, "participants": [1, 2, 3, 4, 5]}, "both odd"),
    ],
)
def test_invalid_fields_are_rejected(index: int, changes: dict[str, Any], pattern: str) -> None:
    message = all_messages()[index]
    with pytest.raises(SecAggMessageError, match=pattern):
        type(message).from_dict(mutated(message, **changes))


def test_coerce_refuses_other_types() -> None:
    with pytest.raises(SecAggMessageError, match="expected Setup"):
        coerce(Setup, 42)


def test_reprs_show_no_payload() -> None:
    response = all_messages()[-1]
    assert response.seed_shares[0].hex() not in repr(response)
    assert "redacted" in repr(response)
    routed = all_messages()[6]
    assert "ciphertexts=<1>" in repr(routed)
    assert "uint32[8]" in repr(all_messages()[7])
