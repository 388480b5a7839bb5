"""``wire.npy_array`` reads what Flower's ``Array`` carries exactly as ``np.load`` does, and refuses what it must."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array

from fedrec import wire

ARRAYS = [
    np.random.default_rng(0).random((1682, 32), dtype=np.float32),
    np.arange(7, dtype=np.int64),
    np.zeros((0, 3)),
    np.asfortranarray(np.random.default_rng(1).random((3, 4))),
    np.ones((), np.float32),
    np.arange(5, dtype=np.uint16),
    np.arange(6, dtype=">f8").reshape(2, 3),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_same_array_as_flower(array: np.ndarray) -> None:
    carried = Array(array)
    got, expected = wire.npy_array(carried.data), carried.numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected) and got.flags.writeable
    got[...] = 0  # a copy: the message's bytes are not touched
    assert np.array_equal(wire.npy_array(carried.data), expected)


def test_version_2_header() -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.arange(4.0), version=(2, 0))
    assert np.array_equal(wire.npy_array(buffer.getvalue()), np.arange(4.0))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "match"), [
    (b"", "not a .npy"),
    (b"PK\x03\x04" + bytes(20), "not a .npy"),
    (b"\x93NUMPY\x09\x00" + bytes(10), "version 9"),
    (_npy(np.arange(10.0))[:-8], "bytes for 10 values"),
    (_npy(np.array([{"a": 1}], dtype=object)), "object arrays"),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    ", "bad .npy header"),
])
def test_malformed_payloads_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(wire.PayloadError, match=match):
        wire.npy_array(data)
