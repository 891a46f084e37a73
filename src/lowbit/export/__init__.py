"""Packed export of a trained lowbit model: ``python -m lowbit.export CKPT OUT`` / ``lowbit.load_packed(OUT)``.

Artifact (a directory, no pickles):

- ``model.safetensors``: per lowbit layer weight, what its chain stores (``lowbit.size``):
  ``<name>.weight.codes`` (ternary at 5 trits per byte, or a k-bit stream; ``.values`` fp32 when
  nothing quantizes the weight), ``.scales`` (fp32 per range), ``.zero_points`` (k-bit stream,
  asymmetric grids), ``.exp_bias`` (int16 per range, AdaptivFloat) and with a pruning mask, when cheaper than
  dense codes, ``.bitmap`` (1 bit per weight), ``.csr_cols`` + ``.csr_rowptr``, or ``.delta`` + ``.delta_width``
  (gaps between survivors as w-bit symbols, ``lowbit.size.delta_index``) with the codes of surviving weights only
  (``lowbit.size.layer_storage`` picks the format; a dense layer reloads with an all-True mask). Every other
  tensor of the state dict (biases, LayerNorm, float embeddings, classifier, activation ranges) as is.
- ``lowbit.json``: format, the HF config, the method configs of the run (each method's
  ``frozen_config``, so the artifact replays without the files the run read) and per packed layer
  its shape, value kind, bits, granularity and sparse format.

``load_packed`` rebuilds the model with ``lowbit.builder`` (same methods, purpose ``deploy``),
loads the float parts and the buffers, unpacks every weight, and freezes the chains
(``freeze_weight_``), so its logits equal the fake-quant model's. The safetensors payload equals
``size_report(model).total_bits / 8`` bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.errors import check
from lowbit.export.packing import pack_bits, pack_trits, unpack_bits, unpack_trits
from lowbit.layers import lowbit_layers
from lowbit.methods import METHOD_ORDER, Method
from lowbit.quant.granularity import Granularity
from lowbit.quant.quantizers import QParams
from lowbit.size import delta_gaps, delta_index, layer_storage

FORMAT = "lowbit-packed-v2"
WEIGHTS_FILE, META_FILE = "model.safetensors", "lowbit.json"


@dataclass
class PackedSpec:
    kind: str  # "ternary" | "uniform" | "float"
    shape: list[int]
    bits: int
    granularity: dict[str, Any] | None
    symmetric: bool = True
    sparse: str = "dense"  # "dense" | "bitmap" | "csr" | "delta"
    kept: int = 0
    exp_bits: int | None = None  # AdaptivFloat: exponent bits (the bias of each range is stored as int16)


def _granularity_to_dict(g: Granularity) -> dict[str, Any]:
    return {"type": type(g).__name__, **asdict(g)}


def _granularity_from_dict(d: dict[str, Any]) -> Granularity:
    """Any granularity dataclass of ``lowbit.quant.granularity``, by class name."""
    from lowbit.quant import granularity as granularity_module

    d = dict(d)
    cls = getattr(granularity_module, d.pop("type"), None)
    check(isinstance(cls, type) and hasattr(cls, "to_groups"), f"unknown granularity in packed export: {cls!r}")
    return cls(**d)


def _col_bits(cols: int) -> int:
    return max(1, math.ceil(math.log2(cols))) if cols > 1 else 1


def pack_mask(mask: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    flat = mask.reshape(mask.shape[0], -1)
    if fmt == "bitmap":
        return {"bitmap": torch.from_numpy(np.packbits(flat.reshape(-1).numpy().astype(np.uint8), bitorder="little"))}
    if fmt == "delta":
        gaps = delta_gaps(mask)
        index = delta_index(mask, gaps)
        # a gap g is floor(g / escape) escape symbols, then g mod escape (below the escape: a survivor follows)
        ends = torch.cumsum(gaps // index.escape + 1, 0) - 1
        symbols = torch.full((index.symbols,), index.escape, dtype=torch.int64)
        symbols[ends] = gaps % index.escape
        return {"delta": pack_bits(symbols, index.width), "delta_width": torch.tensor([index.width], dtype=torch.uint8)}
    cols = flat.shape[1]
    counts = flat.sum(1).to(torch.int32)
    rowptr = torch.cat([torch.zeros(1, dtype=torch.int32), counts.cumsum(0).to(torch.int32)])
    col_idx = flat.nonzero()[:, 1]  # row-major order
    return {"csr_cols": pack_bits(col_idx, _col_bits(cols)), "csr_rowptr": rowptr}


def unpack_mask(fmt: str, parts: Mapping[str, torch.Tensor], shape: torch.Size, kept: int) -> torch.Tensor:
    numel = shape.numel()
    if fmt == "bitmap":
        bits = np.unpackbits(parts["bitmap"].numpy(), bitorder="little")[:numel]
        return torch.from_numpy(bits.astype(bool)).reshape(shape)
    if fmt == "delta":
        width = int(parts["delta_width"][0])
        escape = 2**width - 1
        # every symbol the bytes hold: the padding bits decode as survivors after the last real one, cut below
        symbols = unpack_bits(parts["delta"], width, parts["delta"].numel() * 8 // width)
        survivor = symbols < escape
        positions = (torch.cumsum(symbols + survivor, 0) - 1)[survivor][:kept]
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[positions] = True
        return mask.reshape(shape)
    rows = shape[0]
    cols = numel // rows
    rowptr = parts["csr_rowptr"].long()
    kept = int(rowptr[-1])
    col_idx = unpack_bits(parts["csr_cols"], _col_bits(cols), kept)
    row_idx = torch.repeat_interleave(torch.arange(rows), rowptr[1:] - rowptr[:-1])
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[row_idx, col_idx] = True
    return mask.reshape(shape)


@torch.no_grad()
def pack_layer(layer) -> tuple[dict[str, torch.Tensor], PackedSpec]:
    """The tensors a lowbit layer's weight is stored as, and their spec."""
    w_eff = layer.effective_weight().detach()
    fmt = layer_storage(layer).format  # the cheapest of dense / bitmap / csr / delta: what the size report counts
    mask = None if fmt == "dense" else layer.weight_mask
    qp: QParams | None = layer.weight_qparams()
    keep = None if mask is None else mask.reshape(-1)
    tensors: dict[str, torch.Tensor] = {}
    if qp is None:
        values = w_eff.reshape(-1)
        tensors["values"] = (values if keep is None else values[keep]).float().contiguous()
        spec = PackedSpec("float", list(w_eff.shape), 32, None)
    else:
        codes = qp.codes(w_eff).reshape(-1)
        if keep is not None:
            codes = codes[keep]
        check(bool(((codes >= qp.qmin) & (codes <= qp.qmax)).all()), "export: a code left its grid")
        if qp.kind == "ternary":
            tensors["codes"] = pack_trits(codes)
        else:
            tensors["codes"] = pack_bits(codes - qp.qmin, qp.bits)  # stored unsigned
        if qp.kind == "adaptivfloat":  # the range is the exponent bias, not a scale
            from lowbit.algorithms.adaptivfloat.quantizer import EXP_BIAS_DTYPE

            tensors["exp_bias"] = qp.exp_bias.reshape(-1).to(EXP_BIAS_DTYPE).contiguous()
        else:
            tensors["scales"] = qp.scale.reshape(-1).float().contiguous()
        if qp.zero_point is not None:
            tensors["zero_points"] = pack_bits(qp.zero_point.reshape(-1).long(), qp.bits)
        spec = PackedSpec(qp.kind, list(w_eff.shape), qp.bits, _granularity_to_dict(qp.granularity), qp.symmetric,
                          exp_bits=getattr(qp, "exp_bits", None))
    if mask is not None:
        spec.sparse = fmt
        tensors.update(pack_mask(mask, fmt))
    spec.kept = int(w_eff.numel() if mask is None else mask.sum())
    return tensors, spec


def unpack_layer(parts: Mapping[str, torch.Tensor], spec: PackedSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight on its grid, keep-mask or None) from ``pack_layer``'s tensors."""
    shape = torch.Size(spec.shape)
    mask = None if spec.sparse == "dense" else unpack_mask(spec.sparse, parts, shape, spec.kept)
    if spec.kind == "float":
        values = parts["values"]
        if mask is None:
            return values.reshape(shape), None
        weight = torch.zeros(shape.numel())
        weight[mask.reshape(-1)] = values
        return weight.reshape(shape), mask
    g = _granularity_from_dict(spec.granularity)
    if spec.kind == "ternary":
        kept_codes = unpack_trits(parts["codes"], spec.kept).long()
        qp = QParams("ternary", 2, g, parts["scales"])
    elif spec.kind == "adaptivfloat":
        from lowbit.algorithms.adaptivfloat import adaptivfloat_qparams

        qp = adaptivfloat_qparams(spec.bits, spec.exp_bits, g, parts["exp_bias"].long())
        kept_codes = unpack_bits(parts["codes"], spec.bits, spec.kept)  # zero is code 0
    else:
        n_ranges = parts["scales"].numel()
        zero = None if spec.symmetric else unpack_bits(parts["zero_points"], spec.bits, n_ranges).float()
        qp = QParams("uniform", spec.bits, g, parts["scales"], zero)
        kept_codes = unpack_bits(parts["codes"], spec.bits, spec.kept) + qp.qmin
    if mask is None:
        codes = kept_codes.reshape(shape)
    else:  # pruned positions hold the code of 0 (every grid contains 0)
        zero_code = torch.zeros(shape, dtype=torch.int64)
        if qp.zero_point is not None:
            zero_code = g.from_groups(g.to_groups(zero_code) + qp.zero_point.long().reshape(-1, 1), shape)
        codes = zero_code.reshape(-1)
        codes[mask.reshape(-1)] = kept_codes
        codes = codes.reshape(shape)
    return qp.dequantize(codes), mask


def export_packed(model: nn.Module, out_dir: str | Path, method_configs: Mapping[str, dict],
                  methods: Mapping[str, Method] | None = None, tokenizer=None) -> dict[str, Any]:
    """Write the packed artifact of a built model; returns size facts (bytes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    layers = dict(lowbit_layers(model))
    tensors: dict[str, torch.Tensor] = {}
    specs: dict[str, dict] = {}
    for name, layer in layers.items():
        parts, spec = pack_layer(layer)
        for part, t in parts.items():
            tensors[f"{name}.weight.{part}"] = t.contiguous()
        specs[name] = asdict(spec)
    from lowbit.size import stored_tensors

    for mod_name, t_name, tensor, is_packed in stored_tensors(model):
        if not is_packed:
            key = f"{mod_name}.{t_name}" if mod_name else t_name
            tensors[key] = tensor.detach().contiguous().clone()
    save_file(tensors, str(out / WEIGHTS_FILE))
    configs = {g: (methods[g].frozen_config(dict(c)) if methods and g in methods else dict(c))
               for g, c in method_configs.items()}
    meta = {"format": FORMAT, "hf_config": model.config.to_dict(), "methods": configs, "packed": specs}
    (out / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / "tokenizer"))
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    return {"weights_bytes": (out / WEIGHTS_FILE).stat().st_size, "payload_bytes": payload,
            "packed_layers": len(specs)}


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the compressed model from ``export_packed``'s directory (eval mode, weights frozen on-grid)."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lowbit.builder import build_methods, check_trusted_config, prepare_model
    from lowbit.roles import FAMILIES

    path = Path(path)
    check((path / META_FILE).is_file(), f"{path}: no {META_FILE} (not a lowbit packed export)")
    meta = json.loads((path / META_FILE).read_text())
    check(meta.get("format") == FORMAT, f"{path / META_FILE}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    hf = dict(meta["hf_config"])
    check_trusted_config(meta["methods"], str(path / META_FILE))
    check(hf.get("model_type") in FAMILIES, f"{path / META_FILE}: model_type {hf.get('model_type')!r} is not supported")
    hf.pop("auto_map", None)  # never remote code
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = AutoModelForSequenceClassification.from_config(config)
    method_cfg = OmegaConf.create({g: meta["methods"].get(g, {"_target_": "lowbit.methods.NoMethod"})
                                   for g in METHOD_ORDER})
    methods = build_methods(method_cfg, choices={})
    prepare_model(model, methods, purpose="deploy")
    tensors = load_file(str(path / WEIGHTS_FILE))
    layers = dict(lowbit_layers(model))
    unpacked: dict[str, torch.Tensor] = {}
    for name, spec_dict in meta["packed"].items():
        check(name in layers, f"{path / META_FILE}: packed layer {name} is not in the rebuilt model")
        spec = PackedSpec(**spec_dict)
        prefix = f"{name}.weight."
        parts = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        weight, mask = unpack_layer(parts, spec)
        unpacked[f"{name}.weight"] = weight
        layer = layers[name]
        mask_module = layer.transform_of_kind("mask")
        check(mask is None or mask_module is not None, f"{path}: {name} has a stored mask but its rebuilt chain has none")
        if mask_module is not None:  # dense storage keeps no mask: the zeros are in the codes
            mask_key = next(f"{name}.weight_transforms.{k}.mask" for k, t in layer.weight_transforms.items()
                            if t is mask_module)
            unpacked[mask_key] = mask if mask is not None else torch.ones(spec.shape, dtype=torch.bool)
    missing, unexpected = model.load_state_dict({**tensors, **unpacked}, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    check(not missing and not unexpected, f"{path / WEIGHTS_FILE}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for layer in layers.values():
        layer.freeze_weight_(already_applied=True)
    model.requires_grad_(False)
    return model.eval()
