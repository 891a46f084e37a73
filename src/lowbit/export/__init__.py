"""Packed export of a compressed model: ``lowbit export CKPT OUT`` / ``lowbit.load_packed(OUT)``.

Artifact (a directory):
- ``model.safetensors``: every float tensor (biases, LayerNorm, float embeddings, the classifier,
  activation-quantizer state) and, per quantized weight, its packed codes (``<name>.codes``, uint8)
  and ranges (``<name>.scales`` fp32, ``<name>.zero_points`` for asymmetric grids);
- ``lowbit.json``: format version, the HF config, the ``quantizer`` and ``bit_assignment`` configs
  used for surgery, and per packed weight its shape, kind, bits and granularity.

Packers are registered per weight-quantizer type (``PACKERS``); exporting a model with a quantizer
that has no packer is a clear error. ``load_packed`` rebuilds the architecture, redoes the same
surgery, loads the float parts, unpacks each weight and freezes it behind a pass-through quantizer,
so its logits equal the fake-quant model's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.errors import LowbitConfigError, check
from lowbit.export.packing import pack_bits, pack_trits, unpack_bits, unpack_trits
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity
from lowbit.quant.quantizers import FLOAT_BITS, UniformWeightQuantizer, WeightQuantizer
from lowbit.registry import Registry

FORMAT = "lowbit-packed-v1"
WEIGHTS_FILE, META_FILE = "model.safetensors", "lowbit.json"


@dataclass
class PackedSpec:
    kind: str  # "ternary" | "uniform"
    shape: list[int]
    bits: int
    granularity: dict[str, Any]
    symmetric: bool = True
    range_bits: int = FLOAT_BITS


def _granularity_to_dict(g: Granularity) -> dict[str, Any]:
    return {"type": type(g).__name__, **asdict(g)}


def _granularity_from_dict(d: dict[str, Any]) -> Granularity:
    """Any granularity dataclass of ``lowbit.quant.granularity``, by class name."""
    from lowbit.quant import granularity as granularity_module

    d = dict(d)
    cls = getattr(granularity_module, d.pop("type"), None)
    check(isinstance(cls, type) and hasattr(cls, "to_groups"), f"unknown granularity in packed export: {cls!r}")
    return cls(**d)


# ---- packers: quantizer type -> (weight -> tensors, spec); kind -> unpacker ----------------------------------------
Packer = Callable[[WeightQuantizer, torch.Tensor], tuple[dict[str, torch.Tensor], PackedSpec]]
PACKERS: Registry[Packer] = Registry("exportable weight quantizer")
UNPACKERS: Registry[Callable[[dict[str, torch.Tensor], PackedSpec], torch.Tensor]] = Registry("packed weight kind")


def _pack_ternary(quantizer: WeightQuantizer, weight: torch.Tensor):
    g = quantizer.granularity
    grouped = g.to_groups(quantizer(weight).detach())
    alpha = grouped.abs().amax(dim=1)
    trits = torch.sign(grouped).to(torch.int8)
    spec = PackedSpec("ternary", list(weight.shape), 2, _granularity_to_dict(g))
    return {"codes": pack_trits(g.from_groups(trits, weight.shape)), "scales": alpha.float()}, spec


def _unpack_ternary(tensors: dict[str, torch.Tensor], spec: PackedSpec) -> torch.Tensor:
    g = _granularity_from_dict(spec.granularity)
    shape = torch.Size(spec.shape)
    trits = unpack_trits(tensors["codes"], shape.numel()).reshape(shape)
    grouped = g.to_groups(trits.float())
    return g.from_groups(grouped * tensors["scales"].unsqueeze(1), shape)


def _pack_uniform(quantizer: UniformWeightQuantizer, weight: torch.Tensor):
    g, bits = quantizer.granularity, quantizer.bits
    w = weight.detach()
    grouped = g.to_groups(w)
    wq = g.to_groups(quantizer(w).detach())
    if quantizer.symmetric:
        scale, zero = Fq.symmetric_scale(grouped, bits), torch.zeros(grouped.shape[0], 1)
        offset = 2 ** (bits - 1) - 1  # codes in [-qmax, qmax] stored unsigned
    else:
        scale, zero = Fq.asymmetric_params(grouped, bits)
        offset = 0
    codes = torch.round(wq / scale + zero).to(torch.int64) + offset
    spec = PackedSpec("uniform", list(weight.shape), bits, _granularity_to_dict(g), quantizer.symmetric,
                      quantizer.range_bits)
    tensors = {"codes": pack_bits(g.from_groups(codes, w.shape), bits), "scales": scale.reshape(-1).float()}
    if not quantizer.symmetric:
        tensors["zero_points"] = zero.reshape(-1).to(torch.int32)
    return tensors, spec


def _unpack_uniform(tensors: dict[str, torch.Tensor], spec: PackedSpec) -> torch.Tensor:
    g = _granularity_from_dict(spec.granularity)
    shape = torch.Size(spec.shape)
    codes = unpack_bits(tensors["codes"], spec.bits, shape.numel()).reshape(shape)
    grouped = g.to_groups(codes).float()
    if spec.symmetric:
        grouped = grouped - (2 ** (spec.bits - 1) - 1)
    else:
        grouped = grouped - tensors["zero_points"].float().unsqueeze(1)
    return g.from_groups(grouped * tensors["scales"].unsqueeze(1), shape)


UNPACKERS.register("ternary", _unpack_ternary)
UNPACKERS.register("uniform", _unpack_uniform)
PACKERS.register(UniformWeightQuantizer, _pack_uniform)


def register_ternary_packers() -> None:
    from lowbit.algorithms.ternarybert import TernaryLATQuantizer, TernaryTWNQuantizer

    for cls in (TernaryTWNQuantizer, TernaryLATQuantizer):
        if cls not in PACKERS:
            PACKERS.register(cls, _pack_ternary)


class DequantizedWeight(WeightQuantizer):
    """Pass-through quantizer for an unpacked (already on-grid) weight; keeps the storage accounting."""

    def __init__(self, spec: PackedSpec):
        super().__init__()
        self.bits, self.granularity, self.range_bits = spec.bits, _granularity_from_dict(spec.granularity), spec.range_bits
        self.kind = spec.kind

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def forward_rows(self, rows: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        return rows

    def storage_bits(self, weight: torch.Tensor) -> int:
        if self.kind == "ternary":
            from lowbit.algorithms.ternarybert.twn import ternary_storage_bits

            return ternary_storage_bits(weight.numel(), self.granularity.groups(weight))
        return super().storage_bits(weight)


# ---- export / load ---------------------------------------------------------------------------------------------
def export_packed(model: nn.Module, out_dir: str | Path, quantizer_cfg: dict, bit_assignment_cfg: dict,
                  tokenizer=None) -> dict[str, Any]:
    """Write the packed artifact of a fake-quant model; returns size facts (bytes)."""
    register_ternary_packers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    packed_names: dict[str, dict] = {}
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    model.eval()
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is None:
            continue
        if type(quantizer) not in PACKERS:
            raise LowbitConfigError(f"layer {name}: weight quantizer {type(quantizer).__name__} is not exportable "
                                    f"(exportable: {sorted(c.__name__ for c in PACKERS)})")
        parts, spec = PACKERS.get(type(quantizer))(quantizer, module.weight)
        for part, t in parts.items():
            tensors[f"{name}.weight.{part}"] = t.contiguous()
        packed_names[name] = asdict(spec)
        skip.add(f"{name}.weight")
    for key, value in model.state_dict(keep_vars=False).items():
        if key not in skip:
            tensors[key] = value.detach().contiguous().clone()
    save_file(tensors, str(out / WEIGHTS_FILE))
    meta = {"format": FORMAT, "hf_config": model.config.to_dict(), "quantizer": quantizer_cfg,
            "bit_assignment": bit_assignment_cfg, "packed": packed_names}
    (out / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / "tokenizer"))
    return {"weights_bytes": (out / WEIGHTS_FILE).stat().st_size, "packed_layers": len(packed_names)}


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the compressed model from ``export_packed``'s directory (eval mode, weights frozen on-grid)."""
    from hydra.utils import instantiate
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lowbit.quant.surgery import quantize_

    register_ternary_packers()
    path = Path(path)
    check((path / META_FILE).is_file(), f"{path}: no {META_FILE} (not a lowbit packed export)")
    meta = json.loads((path / META_FILE).read_text())
    check(meta.get("format") == FORMAT, f"{path / META_FILE}: unknown format {meta.get('format')!r}")
    hf = dict(meta["hf_config"])
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = AutoModelForSequenceClassification.from_config(config)
    quantize_(model, instantiate(meta["quantizer"]), instantiate(meta["bit_assignment"]))
    tensors = load_file(str(path / WEIGHTS_FILE))
    for name, spec_dict in meta["packed"].items():
        spec = PackedSpec(**spec_dict)
        parts = {p: tensors.pop(f"{name}.weight.{p}") for p in ("codes", "scales", "zero_points")
                 if f"{name}.weight.{p}" in tensors}
        module = model.get_submodule(name)
        with torch.no_grad():
            module.weight.copy_(UNPACKERS.get(spec.kind)(parts, spec))
        module.weight_quantizer = DequantizedWeight(spec)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    packed_weights = {f"{n}.weight" for n in meta["packed"]}
    missing = [k for k in missing if k not in packed_weights]
    check(not missing and not unexpected, f"{path / WEIGHTS_FILE}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.requires_grad_(False)
    return model.eval()
