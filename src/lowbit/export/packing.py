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


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned integer codes < 2^bits -> uint8 bitstream of exactly ceil(n·bits/8) bytes."""
    c = codes.reshape(-1).numpy().astype(np.uint16)
    assert c.size == 0 or int(c.max()) < 2**bits, "code out of range"
    bit_planes = ((c[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    flat = np.unpackbits(packed.numpy(), bitorder="little")[: numel * bits].reshape(numel, bits)
    return torch.from_numpy((flat.astype(np.int64) << np.arange(bits)).sum(1))
