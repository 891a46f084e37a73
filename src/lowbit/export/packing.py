"""Bit packing of quantized weights: ternary at 5 trits per byte, k-bit codes as a bitstream.

3^5 = 243 <= 256, so five ternary digits fit in one byte: 1.6 bits per weight instead of 2.
"""

from __future__ import annotations

import numpy as np
import torch

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_TRIT_TABLE = np.array([[(b // 3**i) % 3 for i in range(5)] for b in range(243)], dtype=np.int8) - 1


def pack_trits(trits: torch.Tensor) -> torch.Tensor:
    """{-1, 0, +1} int tensor -> uint8 bytes, 5 trits each (little-endian base 3)."""
    digits = (trits.reshape(-1).to(torch.int16) + 1).numpy().astype(np.uint8)
    pad = (-digits.size) % 5
    digits = np.concatenate([digits, np.ones(pad, dtype=np.uint8)])  # pad with trit 0
    return torch.from_numpy((digits.reshape(-1, 5) * _POW3).sum(1, dtype=np.uint16).astype(np.uint8))


def unpack_trits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.from_numpy(_TRIT_TABLE[packed.numpy()].reshape(-1)[:numel].copy())


#: codes packed per step (a multiple of 8: every chunk ends on a byte boundary), bounding the bit-plane buffers
CHUNK = 1 << 20


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned integer codes < 2^bits -> uint8 bitstream of exactly ceil(n·bits/8) bytes (little-endian bits)."""
    c = codes.reshape(-1).numpy()
    assert c.size == 0 or (int(c.min()) >= 0 and int(c.max()) < 2**bits), "code out of range"
    if bits == 8:  # one code per byte: the bitstream is the codes
        return torch.from_numpy(c.astype(np.uint8))
    shifts = np.arange(bits, dtype=np.uint16)
    out = [np.packbits(((c[i:i + CHUNK, None].astype(np.uint16) >> shifts) & 1).astype(np.uint8).reshape(-1),
                       bitorder="little") for i in range(0, c.size, CHUNK)]
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, dtype=np.uint8))


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    data = packed.numpy()
    if bits == 8:
        return torch.from_numpy(data[:numel].astype(np.int64))
    weights = (1 << np.arange(bits)).astype(np.int64)
    out = []
    for i in range(0, numel, CHUNK):  # CHUNK codes = CHUNK * bits / 8 whole bytes
        n = min(CHUNK, numel - i)
        chunk = data[i * bits // 8: (i + n) * bits // 8 + 1]
        planes = np.unpackbits(chunk, bitorder="little")[: n * bits].reshape(n, bits)
        out.append(planes.astype(np.int64) @ weights)
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, dtype=np.int64))
