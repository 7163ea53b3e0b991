"""CBOR the secure world assembles from parts, for what it seals after every batch.

cbor2 spends about a microsecond on every list or map it encodes, and a module's sealed
state holds one per channel and two per connection the owner ended (up to 4096). Encoded
whole after every batch, the state cost grew with the app's history: 4.7 ms of encoding
per batch at 4096 ended connections, and a hop's p50 went from 0.8 to 6.7 ms. So the parts
that seldom change are encoded once, by cbor2, and kept; after a batch only the counters
are encoded, here. The result is the bytes cbor2 gives for the same value (definite
lengths, shortest heads), so states read and compare as before (tests/test_app_state.py).
"""

from __future__ import annotations

import struct

_H16, _H32, _H64 = struct.Struct(">BH"), struct.Struct(">BI"), struct.Struct(">BQ")

UINT, ARRAY, MAP = 0, 4, 5  # CBOR major types


def head(major: int, n: int) -> bytes:
    """The head of a CBOR item: an unsigned integer (``UINT``), or the length of an array
    or map."""
    if n < 0 or n > 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"CBOR head argument {n} is out of range")
    first = major << 5
    if n < 24:
        return bytes((first | n,))
    if n <= 0xFF:
        return bytes((first | 24, n))
    if n <= 0xFFFF:
        return _H16.pack(first | 25, n)
    if n <= 0xFFFFFFFF:
        return _H32.pack(first | 26, n)
    return _H64.pack(first | 27, n)


def uint(n: int) -> bytes:
    return head(UINT, n)
