"""``python -m lowbit.export CKPT OUT``: pack a trained lowbit checkpoint.

The run's composed config is read from ``<run dir>/.hydra/config.yaml`` (the checkpoint's
``../..``), or ``--config``. Prints the artifact size beside the FP32 safetensors of the same
model and writes ``OUT/size.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lowbit.errors import LowbitConfigError, check
from lowbit.export import export_packed, load_packed


def fp32_safetensors_bytes(model: torch.nn.Module) -> int:
    """Size of the same model's float32 safetensors (shared tensors once), for the compression ratio."""
    seen, tensors = set(), {}
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            tensors[name] = p.detach().float().contiguous()
    with tempfile.TemporaryDirectory() as d:
        save_file(tensors, f"{d}/m.safetensors")
        return Path(f"{d}/m.safetensors").stat().st_size


def export_checkpoint(ckpt: Path, out: Path, config: Path | None = None) -> dict:
    from lowbit.methods import QuantizationMethod
    from lowbit.models import ModelSpec

    check(ckpt.is_file(), f"checkpoint {ckpt} not found")
    config = config or ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    check(config.is_file(), f"run config {config} not found (pass --config)")
    cfg = OmegaConf.load(config)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    num_labels = state["model.classifier.weight"].shape[0] if "model.classifier.weight" in state else \
        state["model.classifier.out_proj.weight"].shape[0]
    spec: ModelSpec = instantiate(cfg.model)
    spec.init_checkpoint = None
    model = spec.build(num_labels)
    QuantizationMethod(instantiate(cfg.quantizer), instantiate(cfg.bit_assignment)).prepare(model)
    own = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, _ = model.load_state_dict(own, strict=False)
    check(not [k for k in missing if "lowbit_attention" not in k], f"{ckpt}: missing weights {missing[:3]}")
    q_cfg = OmegaConf.to_container(cfg.quantizer, resolve=True)
    b_cfg = OmegaConf.to_container(cfg.bit_assignment, resolve=True)
    facts = export_packed(model, out, q_cfg, b_cfg, tokenizer=spec.load_tokenizer())
    facts["fp32_safetensors_bytes"] = fp32_safetensors_bytes(model)
    facts["ratio"] = facts["fp32_safetensors_bytes"] / facts["weights_bytes"]
    (out / "size.json").write_text(json.dumps(facts, indent=2))
    reloaded = load_packed(out)
    facts["reloaded_layers"] = sum(1 for m in reloaded.modules() if hasattr(m, "weight_quantizer"))
    return facts


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--config", type=Path, default=None)
    a = p.parse_args(argv)
    try:
        facts = export_checkpoint(a.ckpt, a.out, a.config)
    except LowbitConfigError as e:
        sys.exit(f"lowbit: error: {e}")
    print(f"packed {facts['packed_layers']} layers: {facts['weights_bytes'] / 1e6:.2f} MB vs FP32 "
          f"{facts['fp32_safetensors_bytes'] / 1e6:.2f} MB ({facts['ratio']:.1f}x smaller) -> {a.out}")
    return facts


if __name__ == "__main__":
    main()
