"""Small valid images for media tests, made here (no files, no imaging library)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """An RGB PNG of `width` x `height` with a gradient that depends on `seed` (so two seeds
    give two different files, hence two different content hashes)."""
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise ValueError("width and height must be in 1..4096")
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            rows += bytes(((x * 4 + seed) % 256, (y * 4 + seed * 7) % 256, (x + y + seed * 13) % 256))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + _chunk(b"IEND", b""))
