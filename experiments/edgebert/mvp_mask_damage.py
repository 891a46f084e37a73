"""How much does one movement-pruning mask cost, against magnitude and random masks of the same sparsity?

Loads a movement-pruning run's checkpoint taken before pruning starts (its scores have learned for the
initial warmup; sparsity still 0), then, per matrix as the run would, prunes the lowest scores (MvP), the
highest scores (the opposite ranking), the smallest |w| (MaP) or a random set, and measures dev loss and
accuracy with no further training. Also: do the MvP masks pick small weights (mean |w| pruned vs kept), and how
far have the weights moved from the pretrained ones (mean |ΔW| vs mean |w|)?

    python train.py data=sst2 pruning=movement pruning.final_sparsity=0.90 ... \
        callbacks.last_checkpoint.every_n_train_steps=70 hydra.run.dir=RUN   # stopped after the first last.ckpt
    python experiments/edgebert/mvp_mask_damage.py RUN --out experiments/edgebert/results/mvp_mask_damage.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lowbit.algorithms.pruning.functional import topk_masks
from lowbit.builder import build, build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the movement-pruning run directory (its .hydra/config.yaml, checkpoints/last.ckpt)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    OmegaConf.register_new_resolver("hydra", lambda *_: str(a.run), replace=True)  # the run's own paths
    cfg = OmegaConf.load(a.run / ".hydra" / "config.yaml")
    built = build_model(cfg, weights="none")
    ckpt = torch.load(a.run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    own = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = built.model.load_state_dict(own, strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    model = built.model.eval()
    pruning = built.methods["pruning"]
    masks = {name: mask for name, (_, mask) in pruning.encoder.items()}
    weights = {name: layer.weight.detach() for name, (layer, _) in pruning.encoder.items()}

    spec = build(cfg.model)
    data = build(cfg.data, tokenizer=spec.load_tokenizer())
    data.setup("fit")
    loaders = data.val_dataloader()
    batches = list(loaders[0] if isinstance(loaders, list) else loaders)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        n, correct, loss = 0, 0, 0.0
        for b in batches:
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            loss += torch.nn.functional.cross_entropy(logits, b["labels"], reduction="sum").item()
            correct += (logits.argmax(-1) == b["labels"]).sum().item()
            n += len(b["labels"])
        return {"dev_loss": round(loss / n, 4), "dev_acc": round(correct / n, 4)}

    generator = torch.Generator().manual_seed(0)
    rankings = {  # higher = kept
        "mvp (lowest scores pruned)": {n: m.scores.detach() for n, m in masks.items()},
        "highest scores pruned": {n: -m.scores.detach() for n, m in masks.items()},
        "map (smallest |w| pruned)": {n: w.abs() for n, w in weights.items()},
        "random": {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()},
    }
    for m in masks.values():
        m.mask.fill_(True)
    result = {"run": str(a.run), "step": int(ckpt["global_step"]), "dense": evaluate(), "pruned": {}}
    for sparsity in a.sparsities:
        for name, ranking in rankings.items():
            for n, keep in topk_masks(ranking, sparsity, "per_matrix").items():
                masks[n].mask.copy_(keep)
            result["pruned"][f"{sparsity} {name}"] = evaluate()
            if name.startswith("mvp"):
                pruned = torch.cat([weights[n][~masks[n].mask].abs() for n in masks])
                kept = torch.cat([weights[n][masks[n].mask].abs() for n in masks])
                result["pruned"][f"{sparsity} {name}"].update(mean_abs_w_pruned=round(pruned.mean().item(), 4),
                                                               mean_abs_w_kept=round(kept.mean().item(), 4))
            print(sparsity, name, result["pruned"][f"{sparsity} {name}"], flush=True)
    # how far fine-tuning has moved the pruned matrices from the pretrained weights (MvP ranks this movement)
    cfg.model.init_checkpoint = None
    pretrained = dict(build_model(cfg, weights="pretrained", with_methods=False).model.named_parameters())
    moved = torch.cat([(w - pretrained[f"{n}.weight"].detach()).abs().reshape(-1) for n, w in weights.items()])
    magnitude = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    result["movement"] = {"mean_abs_dw": round(moved.mean().item(), 6), "mean_abs_w": round(magnitude.mean().item(), 4),
                          "ratio": round((moved.mean() / magnitude.mean()).item(), 4)}
    scores = torch.cat([m.scores.detach().reshape(-1) for m in masks.values()])
    result["scores"] = {"min": round(scores.min().item(), 4), "max": round(scores.max().item(), 4),
                        "mean_abs": round(scores.abs().mean().item(), 4)}
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
