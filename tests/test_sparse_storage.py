"""Pruned + quantized weights stored in the smallest of dense codes, bitmap + codes, CSR + codes, delta index + codes.

Counts are made here by hand from the formats' definitions (plain Python), tensor by tensor, and compared with
``size_report`` and with the bytes the packed export writes for each tensor; ``load_packed`` must restore the
same weights, masks and logits. Masks at 0%, 50%, 90% and 99% sparsity (one-shot magnitude pruning) on the tiny
BERT with 8-bit AdaptivFloat weights (EdgeBERT's setting) and with ternary weights.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from conftest import TINY_RUN
from omegaconf import OmegaConf

from lowbit import load_packed
from lowbit.builder import build_model
from lowbit.export import export_packed, pack_mask, unpack_mask
from lowbit.export.packing import pack_bits
from lowbit.layers import lowbit_layers
from lowbit.methods import METHOD_ORDER
from lowbit.size import size_report

ORDER = ("dense", "bitmap", "csr", "delta")  # ties keep the first


def tensor_bytes(path) -> dict[str, int]:
    """Bytes of each tensor of a safetensors file, from its header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def whole_bytes(bits: float) -> int:
    return math.ceil(bits / 8) * 8


def delta_bits_by_hand(keep: list[bool]) -> tuple[int, int]:
    """(bits, width) of the delta index: gaps between survivors; a gap g costs 1 + g // (2^w - 1) w-bit symbols;
    the cheapest w in [1, 16], plus one byte for w."""
    gaps, last = [], -1
    for i, k in enumerate(keep):
        if k:
            gaps.append(i - last - 1)
            last = i
    best = None
    for w in range(1, 17):
        bits = whole_bytes(sum(1 + g // (2**w - 1) for g in gaps) * w) + 8
        if best is None or bits < best[0]:
            best = (bits, w)
    return best


def expected_storage(mask: torch.Tensor, code_bits) -> tuple[str, int]:
    """(format, bits of codes + index) by hand; ``code_bits(n)``: bits of n stored codes."""
    rows = mask.shape[0]
    cols = mask.numel() // rows
    keep = mask.reshape(-1).tolist()
    kept = sum(keep)
    candidates = {
        "dense": code_bits(len(keep)),
        "bitmap": code_bits(kept) + whole_bytes(len(keep)),
        "csr": code_bits(kept) + whole_bytes(kept * max(1, math.ceil(math.log2(cols)))) + (rows + 1) * 32,
        "delta": code_bits(kept) + delta_bits_by_hand(keep)[0],
    }
    best = min(ORDER, key=lambda f: (candidates[f], ORDER.index(f)))
    return best, candidates[best]


def test_delta_index_by_hand():
    """Survivors at 0, 3, 4, 19 of 20: gaps 0, 2, 0, 14. At 2 bits (escape 3): 0 | 2 | 0 | 3 3 3 3 2 = 8 symbols,
    16 bits + the width byte: 24 bits (4 bits: 4 symbols, also 24; 1 bit: 20 symbols, 32; 3 bits: 6 symbols, 32)."""
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[0, 3, 4, 19]] = True
    assert delta_bits_by_hand(mask.tolist()) == (24, 2)
    parts = pack_mask(mask.reshape(4, 5), "delta")
    assert parts["delta_width"].tolist() == [2]
    assert torch.equal(parts["delta"], pack_bits(torch.tensor([0, 2, 0, 3, 3, 3, 3, 2]), 2))
    assert torch.equal(unpack_mask("delta", parts, torch.Size([4, 5]), kept=4), mask.reshape(4, 5))


@pytest.mark.parametrize("sparsity", [0.0, 0.01, 0.3, 0.5, 0.9, 0.99, 0.999])
def test_delta_round_trip_on_random_masks(sparsity):
    g = torch.Generator().manual_seed(int(sparsity * 1000))
    for shape in [(32, 32), (37, 61), (120, 32), (7,)]:
        mask = torch.rand(shape, generator=g) >= sparsity
        parts = pack_mask(mask, "delta")
        assert torch.equal(unpack_mask("delta", parts, torch.Size(shape), int(mask.sum())), mask)
        stored = sum(t.numel() * t.element_size() for t in parts.values())
        assert 8 * stored == delta_bits_by_hand(mask.reshape(-1).tolist())[0]


SETTINGS = {
    # 8-bit AdaptivFloat codes + an int16 exponent bias per tensor
    "adaptivfloat8": (["quantizer=adaptivfloat", "quantizer.exp_bits=3", "bit_assignment.bits=8"],
                      lambda n: whole_bytes(8 * n), 16),
    # ternary codes at 5 trits per byte + one fp32 alpha (word embeddings: one per row, see below)
    "ternary": (["quantizer=ternary_twn", "bit_assignment=w2e2"], lambda n: (n + 4) // 5 * 8, 32),
}
#: at these sparsities the tiny model's 32x32 attention matrices take this format (AdaptivFloat 8-bit codes)
ATTENTION_FORMAT = {0.0: "dense", 0.5: "bitmap", 0.9: "delta", 0.99: "delta"}


def _pruned_quantized(make_cfg, setting: str, sparsity: float):
    overrides, _, _ = SETTINGS[setting]
    cfg = make_cfg([*TINY_RUN, *overrides, "pruning=magnitude", "pruning.schedule=oneshot",
                    f"pruning.final_sparsity={sparsity}", f"pruning.embedding_sparsity={sparsity}"])
    torch.manual_seed(0)
    built = build_model(cfg, num_labels=2, weights="none")
    return built.model.eval(), built.methods, cfg


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_each_tensor_takes_the_smallest_format_and_round_trips(setting, sparsity, make_cfg, batch, tmp_path):
    model, methods, cfg = _pruned_quantized(make_cfg, setting, sparsity)
    _, code_bits, range_bits = SETTINGS[setting]
    report = size_report(model)
    configs = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in METHOD_ORDER}
    export_packed(model, tmp_path / "art", configs, methods)
    stored = tensor_bytes(tmp_path / "art" / "model.safetensors")
    masked = {n: layer for n, layer in lowbit_layers(model) if layer.weight_mask is not None}
    assert len(masked) == 13  # 12 encoder Linears + the word embedding
    for name, layer in masked.items():
        mask = layer.weight_mask
        assert float(1 - mask.float().mean()) == pytest.approx(sparsity, abs=0.01), name
        fmt, bits = expected_storage(mask, code_bits)
        ranges = mask.shape[0] if (setting == "ternary" and "word_embeddings" in name) else 1
        storage = report.layers[name]
        assert (storage.format, storage.value_bits + storage.index_bits) == (fmt, bits), name
        assert storage.total_bits == bits + ranges * range_bits, name
        written = sum(b for k, b in stored.items() if k.startswith(f"{name}.weight."))
        assert 8 * written == storage.total_bits, name  # the export writes what the report counts
        if setting == "adaptivfloat8" and ".attention.self." in name:
            assert fmt == ATTENTION_FORMAT[sparsity], name
    if sparsity >= 0.9:
        assert report.formats().get("delta", 0) > 0
    loaded = load_packed(tmp_path / "art")
    meta = json.loads((tmp_path / "art" / "lowbit.json").read_text())
    with torch.no_grad():
        for name, layer in masked.items():
            assert meta["packed"][name]["sparse"] == report.layers[name].format
            restored = loaded.get_submodule(name)
            assert torch.equal(restored.weight, layer.effective_weight()), name
            if report.layers[name].format != "dense":  # dense codes hold the zeros; no mask is stored
                assert torch.equal(restored.weight_mask, layer.weight_mask), name
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert size_report(loaded).total_bits == report.total_bits


@pytest.mark.parametrize("bits", [1, 3, 5, 8, 12, 16])
def test_bit_streams_are_little_endian_fields_across_chunks(bits, monkeypatch):
    """Code j's bit i is bit j·bits + i of the stream (byte (j·bits + i) // 8, bit (j·bits + i) % 8), whatever the
    chunking of the packer (CHUNK codes at a time)."""
    from lowbit.export import packing

    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (45,), generator=g)
    stream = [0] * math.ceil(45 * bits / 8)
    for j, code in enumerate(codes.tolist()):
        for i in range(bits):
            if code >> i & 1:
                stream[(j * bits + i) // 8] |= 1 << ((j * bits + i) % 8)
    for chunk in (8, 16, 1 << 20):
        monkeypatch.setattr(packing, "CHUNK", chunk)
        assert packing.pack_bits(codes, bits).tolist() == stream
        assert torch.equal(packing.unpack_bits(torch.tensor(stream, dtype=torch.uint8), bits, 45), codes)
