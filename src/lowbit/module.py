"""Lightning module for quantization-aware fine-tuning of any composed method set.

One training path for every method: the task loss (weighted by the methods; 0 for
pure distillation) plus each method's named loss terms. Metrics are computed on the
whole eval set at epoch end and logged as ``val/<metric>`` (MNLI mismatched:
``val_mm/<metric>``).
"""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from lowbit.data.metrics import compute_metrics, predictions
from lowbit.data.tasks import GlueTask
from lowbit.errors import check
from lowbit.methods import Method
from lowbit.quant.size import size_report


class CompressionModule(pl.LightningModule):
    def __init__(self, model: nn.Module, task: GlueTask, methods: Sequence[Method] = (), lr: float = 2e-5,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.1, adam_eps: float = 1e-8,
                 metric_prefix: str = ""):
        super().__init__()
        check(lr > 0, f"optim.lr must be positive, got {lr!r}")
        check(0 <= warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        check(weight_decay >= 0, f"optim.weight_decay must be >= 0, got {weight_decay!r}")
        self.model, self.task, self.methods = model, task, list(methods)
        self.lr, self.weight_decay, self.warmup_ratio, self.adam_eps = lr, weight_decay, warmup_ratio, adam_eps
        self.metric_prefix = metric_prefix  # "finetune/" for the float stage before compression
        self.task_loss_weight = 1.0
        for m in self.methods:
            self.task_loss_weight *= m.task_loss_weight
        self.loss_terms = [term for m in self.methods for term in m.loss_terms()]
        self.forward_kwargs: dict = {}
        for m in self.methods:
            self.forward_kwargs.update(m.forward_kwargs())
        self._eval_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.final_metrics: dict[str, float] = {}
        self.final_metrics_step = -1

    def forward(self, batch):
        return self.model(**batch, **self.forward_kwargs)

    def training_step(self, batch, batch_idx):
        out = self(batch)
        losses = {"task": out.loss * self.task_loss_weight} if self.task_loss_weight else {}
        for term in self.loss_terms:
            losses.update(term(out, batch))
        loss = sum(losses.values())
        n = batch["input_ids"].shape[0]
        self.log(f"{self.metric_prefix}train/loss", loss, prog_bar=True, batch_size=n)
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"{self.metric_prefix}train/loss_{name}", value, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        out = self.model(**batch)
        preds = predictions(out.logits.detach().float(), self.task.is_regression)
        self._eval_outputs.setdefault(dataloader_idx, []).append((preds.cpu(), batch["labels"].cpu()))

    def on_validation_epoch_end(self):
        for idx, outputs in sorted(self._eval_outputs.items()):
            preds = torch.cat([p for p, _ in outputs])
            labels = torch.cat([y for _, y in outputs])
            prefix = self.metric_prefix + self.task.eval_prefix(idx)
            for name, value in compute_metrics(self.task.metrics, preds, labels).items():
                self.log(f"{prefix}/{name}", value, prog_bar=(idx == 0 and name == self.task.main_metric),
                         add_dataloader_idx=False)
                self.final_metrics[f"{prefix}/{name}"] = value
        self._eval_outputs.clear()
        self.final_metrics_step = self.global_step

    def configure_optimizers(self):
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": self.weight_decay},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, eps=self.adam_eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def model_size(self) -> dict[str, float]:
        report = size_report(self.model)
        return {"model/size_bits": float(report.total_bits), "model/size_mb": report.megabytes,
                "model/compression": report.compression_ratio}
