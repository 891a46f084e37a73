"""``python -m lowbit.export CKPT OUT``: pack a trained lowbit checkpoint.

The run's composed config is read from ``<run dir>/.hydra/config.yaml`` (the checkpoint's
``../..``), or ``--config``. The model is rebuilt with every method of that config
(``lowbit.builder``), the checkpoint loaded into it (every key, strictly), packed, reloaded with
``load_packed`` and checked: the reloaded logits must equal the checkpoint's on a probe batch.
Prints the artifact size beside the FP32 safetensors of the same model and writes ``OUT/size.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lowbit.errors import LowbitConfigError, check
from lowbit.export import export_packed, load_packed
from lowbit.methods import METHOD_ORDER


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


def load_run_checkpoint(ckpt: Path, config: Path | None = None):
    """(model rebuilt from the run's config with the checkpoint's weights, methods, cfg)."""
    from lowbit.builder import build_model, check_trusted_config
    from lowbit.models import read_checkpoint

    check(ckpt.exists(), f"checkpoint {ckpt} not found")
    check(ckpt.is_file(), f"checkpoint {ckpt} is not a file")
    state = read_checkpoint(ckpt, "checkpoint")  # the file given first: a text file, a truncated one
    config = config or ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    check(config.is_file(), f"run config {config} not found (pass --config)")
    try:
        cfg = OmegaConf.load(config)
    except Exception as e:  # noqa: BLE001 - YAML syntax errors, undecodable or unreadable file
        raise LowbitConfigError(f"run config {config} cannot be read as YAML ({type(e).__name__}: "
                                f"{_first_line(e)})") from None
    check(OmegaConf.is_dict(cfg) and OmegaConf.is_dict(cfg.get("model")) and OmegaConf.is_dict(cfg.get("data")),
          f"run config {config} is not a lowbit run config (no model / data groups)")
    check_trusted_config(cfg, str(config), model=True)  # only lowbit's own classes are built from it
    state = state.get("state_dict", state)
    check(isinstance(state, dict), f"{ckpt} is not a lowbit checkpoint")
    head = [k for k in ("model.classifier.weight", "model.classifier.out_proj.weight") if k in state]
    check(head, f"{ckpt}: no classifier weights (not a lowbit checkpoint?)")
    cfg.model.init_checkpoint = None
    built = build_model(cfg, num_labels=state[head[0]].shape[0], purpose="deploy", weights="none")
    own = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        missing, unexpected = built.model.load_state_dict(own, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln] or [_first_line(e)]
        raise LowbitConfigError(f"{ckpt}: does not fit the run's model ({lines[0].rstrip('.')}; "
                                f"a checkpoint of another run or model?)") from None
    check(not missing and not unexpected, f"{ckpt}: does not match the run's methods "
                                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return built.model.eval(), built.methods, cfg


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def probe_batch(model: torch.nn.Module, n: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export_checkpoint(ckpt: Path, out: Path, config: Path | None = None) -> dict:
    model, methods, cfg = load_run_checkpoint(ckpt, config)
    method_cfgs = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in METHOD_ORDER}
    tokenizer = None
    try:
        from lowbit.builder import build

        tokenizer = build(cfg.model).load_tokenizer()
    except LowbitConfigError:
        pass  # the artifact is complete without it
    facts = export_packed(model, out, method_cfgs, methods, tokenizer=tokenizer)
    facts["fp32_safetensors_bytes"] = fp32_safetensors_bytes(model)
    facts["ratio"] = facts["fp32_safetensors_bytes"] / facts["weights_bytes"]
    reloaded = load_packed(out)
    batch = probe_batch(model)
    with torch.no_grad():
        diff = (model(**batch).logits - reloaded(**batch).logits).abs().max().item()
    facts["reload_max_abs_logit_diff"] = diff
    check(diff == 0.0, f"export: reloaded logits differ from the checkpoint's by {diff:.3g}")
    (out / "size.json").write_text(json.dumps(facts, indent=2))
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
          f"{facts['fp32_safetensors_bytes'] / 1e6:.2f} MB ({facts['ratio']:.1f}x smaller), reloaded logits equal "
          f"-> {a.out}")
    return facts


if __name__ == "__main__":
    main()
