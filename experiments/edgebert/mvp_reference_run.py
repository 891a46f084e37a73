"""Movement pruning as the AUTHORS implement it, on the sst2_mvp_10 row's model, data and 750-step budget.

Does MvP at 10% remaining also collapse to the majority class with Sanh et al.'s own kernels and training loop?
(lowbit's row, ``conf/table/movement_pruning.yaml`` sst2_mvp_10, ends at 50.92% on SST-2 dev.)

- Data and model through lowbit: the row's config composed with ``pruning=none``, lowbit's GLUEDataModule (4,000
  SST-2 examples, length-grouped batches of 32, 125 steps/epoch; the 872 dev examples) and lowbit's builder
  (MiniLM-L6 as a plain transformers BertForSequenceClassification), seeded with ``cfg.seed`` as a lowbit run.
- The authors' kernels, imported from ``--emmental`` (their ``emmental/modules/`` recreated outside this
  repository: huggingface/transformers examples/research_projects/movement-pruning): every encoder Linear of their
  MaskedBert set (attention query/key/value, attention.output.dense, intermediate.dense, output.dense; not the
  pooler, classifier or embeddings) becomes their ``MaskedLinear(pruning_method="topK", mask_init="constant",
  mask_scale=0.0)`` with the pretrained weight and bias; the threshold reaches its forward through a wrapper.
- Their loop (masked_run_glue.py ``train``): AdamW groups (mask_scores at 1e-2 without decay; the rest at 1e-4 with
  lowbit's weight decay, none for bias / LayerNorm.weight), get_linear_schedule_with_warmup(75, 750), their
  ``schedule_threshold`` (``--emmental``/masked_run_glue.py: an excerpt) before each forward, clip_grad_norm_ over
  all parameters (mask_scores included) at 1.0, 6 epochs.
- Dev accuracy every 125 steps at the training threshold and at ``final_threshold`` (what their ``evaluate()``
  passes); the train loss around the first pruned steps; the fraction of weights kept. ``--dense`` holds the
  threshold at 1.0 (nothing pruned): a sanity check that the loop fine-tunes.

    python experiments/edgebert/mvp_reference_run.py --emmental /tmp/emmental_ref --max-steps 20 --eval-every 20 \
        --out /tmp/mvp_reference_smoke.json                                  # smoke run
    python experiments/edgebert/mvp_reference_run.py --emmental /tmp/emmental_ref            # the 750-step run
    python experiments/edgebert/mvp_reference_run.py --emmental /tmp/emmental_ref --dense --max-steps 250
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from lowbit.builder import build, build_model
from lowbit.compose import compose_train

ROW = ["data=sst2", "data.max_train_samples=4000", "data.group_by_length=true", "data.max_length=128",
       "trainer.max_epochs=6", "optim.lr=1e-4", "optim.warmup_ratio=0.1", "pruning=none", "logger=none"]
#: the MaskedBert modules (emmental/modeling_bert_masked.py) that are MaskedLinear
MASKED = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "intermediate.dense", "output.dense")
RESULTS = Path(__file__).resolve().parent / "results" / "mvp_reference_run.json"


class Threshold:
    value = 1.0


class WithThreshold(nn.Module):
    """Calls the authors' MaskedLinear with the current step's threshold (their forward takes it as an argument)."""

    def __init__(self, inner: nn.Module, threshold: Threshold):
        super().__init__()
        self.inner, self.threshold = inner, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, threshold=self.threshold.value)


def authors_schedule_threshold(emmental: Path):
    """``schedule_threshold`` of their masked_run_glue.py, from ``<emmental>/masked_run_glue.py``: an excerpt holding
    that function verbatim (the full script imports MaskedBert and APIs this transformers no longer has)."""
    spec = importlib.util.spec_from_file_location("masked_run_glue", emmental / "masked_run_glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.schedule_threshold


def mask_encoder(model: nn.Module, masked_linear, threshold: Threshold) -> list[nn.Module]:
    """Every MaskedBert encoder Linear replaced by the authors' MaskedLinear (weights copied); returns them."""
    layers = []
    for block in model.bert.encoder.layer:
        for path in MASKED:
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            old: nn.Linear = getattr(parent, attr)
            new = masked_linear(old.in_features, old.out_features, bias=True, mask_init="constant", mask_scale=0.0,
                                pruning_method="topK")
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(old.bias)
            setattr(parent, attr, WithThreshold(new, threshold))
            layers.append(new)
    return layers


@torch.no_grad()
def kept_fraction(layers, binarizer, threshold: float) -> float:
    kept = sum(float(binarizer.apply(m.mask_scores, threshold).sum()) for m in layers)
    return kept / sum(m.mask_scores.numel() for m in layers)


@torch.no_grad()
def evaluate(model: nn.Module, loader, threshold: Threshold, value: float) -> dict[str, float]:
    """Accuracy and mean loss over the whole dev set (lowbit: argmax of the logits vs labels, every example)."""
    saved, threshold.value = threshold.value, value
    model.eval()
    n, correct, loss, predicted_pos = 0, 0, 0.0, 0
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss += nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        pred = logits.argmax(-1)
        correct += int((pred == batch["labels"]).sum())
        predicted_pos += int(pred.sum())
        n += len(batch["labels"])
    model.train()
    threshold.value = saved
    return {"threshold": round(value, 4), "acc": round(correct / n, 4), "loss": round(loss / n, 4),
            "frac_predicted_positive": round(predicted_pos / n, 4), "n": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--emmental", type=Path, required=True, help="directory holding the authors' emmental/ package "
                   "(modules/binarizer.py, modules/masked_nn.py) and masked_run_glue.py")
    p.add_argument("--dense", action="store_true", help="hold the threshold at 1.0 (nothing pruned)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (the schedule stays 750)")
    p.add_argument("--eval-every", type=int, default=125)
    p.add_argument("--final-threshold", type=float, default=0.10)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()

    sys.path.insert(0, str(a.emmental.resolve()))
    from emmental.modules import MaskedLinear, TopKBinarizer  # the authors' kernels, never in this repository

    schedule_threshold = authors_schedule_threshold(a.emmental)
    t0 = time.time()
    cfg = compose_train(ROW, tempfile.mkdtemp(prefix="mvp_reference_"), root_dir=Path(__file__).resolve().parents[2])
    pl.seed_everything(cfg.seed, workers=True)  # as lowbit.pipeline.setup: before the model (classifier init)
    torch.use_deterministic_algorithms(True)  # lowbit's trainer.deterministic: true
    spec = build(cfg.model)
    data = build(cfg.data, tokenizer=spec.load_tokenizer())
    data.setup("fit")
    model = build_model(cfg).model  # pruning=none: transformers' BertForSequenceClassification, pretrained
    threshold = Threshold()
    layers = mask_encoder(model, MaskedLinear, threshold)
    model.train()  # from_pretrained returns eval mode (dropout off)

    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()[0]
    epochs, warmup_ratio = int(cfg.trainer.max_epochs), float(cfg.optim.warmup_ratio)
    t_total = len(train_loader) * epochs
    warmup_steps = int(warmup_ratio * t_total)  # lowbit.optim.linear_warmup: 75 of 750
    lr, wd, eps = float(cfg.optim.lr), float(cfg.optim.weight_decay), float(cfg.optim.optimizer.eps)
    sched = {"warmup_steps": warmup_steps, "initial_threshold": 1.0, "final_threshold": a.final_threshold,
             "initial_warmup": 1, "final_warmup": 2, "final_lambda": 0.0}
    # masked_run_glue.py's groups; their transformers.AdamW defaults to weight_decay 0 for the scores' group
    no_decay = ["bias", "LayerNorm.weight"]
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    groups = [
        {"params": [q for n, q in named if "mask_score" in n], "lr": 1e-2, "weight_decay": 0.0},
        {"params": [q for n, q in named if "mask_score" not in n and not any(nd in n for nd in no_decay)],
         "lr": lr, "weight_decay": wd},
        {"params": [q for n, q in named if "mask_score" not in n and any(nd in n for nd in no_decay)],
         "lr": lr, "weight_decay": 0.0},
    ]
    assert len(groups[0]["params"]) == len(layers), "every MaskedLinear's mask_scores in the scores' group"
    optimizer = torch.optim.AdamW(groups, lr=lr, eps=eps)  # lowbit's optimizer (betas 0.9, 0.999)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps, num_training_steps=t_total)
    stop = min(t_total, a.max_steps or t_total)

    evaluations, losses, first_pruned = [], [], None
    step = 0
    model.zero_grad()
    for _epoch in range(epochs):
        for batch in train_loader:
            thr = 1.0 if a.dense else schedule_threshold(step=step, total_step=t_total, **sched)[0]
            threshold.value = thr
            if first_pruned is None and any(int(thr * m.weight.numel()) < m.weight.numel() for m in layers):
                first_pruned = step
            loss = model(**batch).loss
            loss.backward()
            losses.append(loss.item())
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            model.zero_grad()
            step += 1
            if step % a.eval_every == 0 or step == stop:
                row = {"step": step, "train_threshold": round(thr, 4),
                       "kept_fraction_train_threshold": round(kept_fraction(layers, TopKBinarizer, thr), 4),
                       "eval_at_train_threshold": evaluate(model, val_loader, threshold, thr),
                       "mean_abs_score": round(float(sum(m.mask_scores.detach().abs().sum() for m in layers))
                                               / sum(m.mask_scores.numel() for m in layers), 5),
                       "wall_s": round(time.time() - t0)}
                if not a.dense:  # their evaluate() passes final_threshold whatever the training threshold
                    row["kept_fraction_final_threshold"] = round(kept_fraction(layers, TopKBinarizer,
                                                                               a.final_threshold), 4)
                    row["eval_at_final_threshold"] = evaluate(model, val_loader, threshold, a.final_threshold)
                evaluations.append(row)
                print(json.dumps(row), flush=True)
            elif step % 25 == 0:
                print(f"step {step} thr {thr:.4f} loss(25) {sum(losses[-25:]) / 25:.4f} "
                      f"{time.time() - t0:.0f}s", flush=True)
            if step >= stop:
                break
        if step >= stop:
            break

    run = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "settings": {
            "lowbit_overrides": ROW, "seed": int(cfg.seed), "steps_per_epoch": len(train_loader), "epochs": epochs,
            "t_total": t_total, "steps_run": step, "dense": a.dense,
            "schedule_threshold": sched if not a.dense else "threshold held at 1.0",
            "optimizer": {"class": "torch.optim.AdamW (lowbit's optim.optimizer)", "betas": [0.9, 0.999], "eps": eps,
                          "groups": {"mask_scores": {"lr": 1e-2, "weight_decay": 0.0},
                                     "decay": {"lr": lr, "weight_decay": wd},
                                     "no_decay (bias, LayerNorm.weight)": {"lr": lr, "weight_decay": 0.0}}},
            "lr_schedule": f"get_linear_schedule_with_warmup(warmup={warmup_steps}, total={t_total}), every group",
            "clip_grad_norm": "clip_grad_norm_(model.parameters(), 1.0): mask_scores included",
            "masked_linear": "emmental MaskedLinear(pruning_method='topK', mask_init='constant', mask_scale=0.0) "
                             f"on {len(layers)} encoder Linears ({', '.join(MASKED)})",
            "deterministic": True, "torch_threads": torch.get_num_threads(),
        },
        "first_pruned_step": first_pruned,
        "evaluations": evaluations,
        # the loss of the step's batch (steps 0-based; 64, 69, ... as the lowbit row's csv log)
        "train_loss_steps_60_130": {s: round(losses[s], 4) for s in range(64, min(131, len(losses)), 5)},
        "train_loss_mean_per_25_steps": {f"{s}-{s + 24}": round(sum(losses[s:s + 25]) / len(losses[s:s + 25]), 4)
                                         for s in range(0, len(losses), 25)},
        "wall_s": round(time.time() - t0),
    }
    assert all(math.isfinite(v) for v in losses), "non-finite training loss"
    out = json.loads(a.out.read_text()) if a.out.is_file() else {}
    out.setdefault("what", "Sanh et al.'s own movement-pruning kernels (emmental TopKBinarizer / MaskedLinear) and "
                   "masked_run_glue.py loop semantics on the sst2_mvp_10 row's model (MiniLM-L6), data (4,000 SST-2, "
                   "length-grouped batches of 32) and budget (750 steps); dev = the 872 SST-2 dev examples; one seed. "
                   "Written by experiments/edgebert/mvp_reference_run.py")
    out.setdefault("runs", {})["dense_threshold_1" if a.dense else f"movement_topk_final_{a.final_threshold}"] = run
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
