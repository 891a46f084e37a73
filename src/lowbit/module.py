"""Lightning module for quantization-aware fine-tuning of any composed method set.

One training path for every method and every stage: the task loss (weighted by the methods;
0 for pure distillation) plus each method's named loss terms, which see the global step.
Forwards carry each method's ``forward_kwargs(mode)``. Metrics are computed on the whole eval
set at epoch end and logged as ``val/<metric>`` (MNLI mismatched: ``val_mm/<metric>``), with
each method's ``eval_metrics`` over what its ``eval_outputs`` kept during the same pass
(per-example tensors, examples along dim 0). Under DDP each rank evaluates a shard: the shards are
gathered and the sampler's padding duplicates dropped before any metric, so metrics are over exactly
the eval set and identical on every rank (``lowbit.distributed.gather_eval``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from lowbit.data.metrics import compute_metrics, predictions
from lowbit.data.tasks import GlueTask
from lowbit.distributed import gather_eval, is_distributed, sampler_indices
from lowbit.errors import LowbitRunError
from lowbit.methods import Method, ParamGroup
from lowbit.optim import OptimSpec
from lowbit.size import size_report

#: parameter-name endings that get no weight decay (BERT practice)
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")


class CompressionModule(pl.LightningModule):
    def __init__(self, model: nn.Module, task: GlueTask, methods: Mapping[str, Method] | None = None,
                 optim: OptimSpec | None = None, param_groups: Sequence[ParamGroup] = (), metric_prefix: str = "",
                 loss_groups: Sequence[str] | None = None):
        """``loss_groups``: method groups whose loss terms apply, plus ``"task"`` (None: every method and the task)."""
        super().__init__()
        self.model, self.task, self.methods = model, task, dict(methods or {})
        self.optim, self.param_groups_spec = optim, list(param_groups)
        self.metric_prefix = metric_prefix  # "finetune/" for the float stage before compression
        active = list(self.methods) if loss_groups is None else [g for g in self.methods if g in loss_groups]
        task_on = loss_groups is None or "task" in loss_groups
        self.task_loss_weight = float(task_on) * math.prod(self.methods[g].task_loss_weight for g in active)
        self.loss_terms = [term for g in active for term in self.methods[g].loss_terms()]
        self.forward_kwargs = {mode: {} for mode in ("train", "eval")}
        for mode, kwargs in self.forward_kwargs.items():
            for m in self.methods.values():
                kwargs.update(m.forward_kwargs(mode))
        self._eval_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._method_eval: dict[int, dict[str, dict[str, list[torch.Tensor]]]] = {}
        self.final_metrics: dict[str, float] = {}
        self.final_metrics_step = -1
        self.last_loss_terms: dict[str, float] = {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # a run resumed after its last training step (killed in the closing validation) trains nothing more: it
        # still reports the loss terms of that step
        checkpoint["lowbit_last_loss_terms"] = dict(self.last_loss_terms)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.last_loss_terms = dict(checkpoint.get("lowbit_last_loss_terms", {}))

    def forward(self, batch, mode: str = "train"):
        return self.model(**batch, **self.forward_kwargs[mode])

    def training_step(self, batch, batch_idx):
        out = self(batch, "train")
        losses = {"task": out.loss * self.task_loss_weight} if self.task_loss_weight else {}
        for term in self.loss_terms:
            losses.update(term(out, batch, self.global_step))
        loss = sum(losses.values())
        n = batch["input_ids"].shape[0]
        self.log(f"{self.metric_prefix}train/loss", loss, prog_bar=True, batch_size=n)
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"{self.metric_prefix}train/loss_{name}", value, batch_size=n)
        self.last_loss_terms = {name: float(value.detach()) for name, value in losses.items()}
        if not all(math.isfinite(v) for v in self.last_loss_terms.values()):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in self.last_loss_terms.items())
            raise LowbitRunError(f"non-finite loss at step {self.global_step} ({self.metric_prefix or 'main'} stage): "
                                 f"{terms}; lower optim.lr or check the data")
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        out = self(batch, "eval")
        preds = predictions(out.logits.detach().float(), self.task.is_regression)
        self._eval_outputs.setdefault(dataloader_idx, []).append((preds.cpu(), batch["labels"].cpu()))
        for group, method in self.methods.items():
            kept = method.eval_outputs(out, batch)
            if kept:
                store = self._method_eval.setdefault(dataloader_idx, {}).setdefault(group, {})
                for key, value in kept.items():
                    store.setdefault(key, []).append(value.detach().cpu())

    def _gathered_eval(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """Predictions, labels and methods' kept outputs of eval set ``idx``: under DDP, every rank's
        shard gathered, the sampler's padding duplicates dropped, in dataset order (``gather_eval``)."""
        outputs = self._eval_outputs[idx]
        local = {"preds": torch.cat([p for p, _ in outputs]), "labels": torch.cat([y for _, y in outputs])}
        for group, kept in self._method_eval.get(idx, {}).items():
            local.update({f"{group}\0{k}": torch.cat(v) for k, v in kept.items()})
        if is_distributed():
            loaders = self.trainer.val_dataloaders
            loader = loaders[idx] if isinstance(loaders, (list, tuple)) else loaders
            local = gather_eval(local, sampler_indices(loader, local["preds"].shape[0]))
        methods: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in local.items():
            if "\0" in key:
                group, name = key.split("\0", 1)
                methods.setdefault(group, {})[name] = value
        return local["preds"], local["labels"], methods

    def on_validation_epoch_end(self):
        distributed = is_distributed()
        for idx in sorted(self._eval_outputs):
            preds, labels, method_outputs = self._gathered_eval(idx)
            prefix = self.metric_prefix + self.task.eval_prefix(idx)
            values = compute_metrics(self.task.metrics, preds, labels)
            for group, collected in method_outputs.items():
                values.update(self.methods[group].eval_metrics(collected, labels, self.task))
            for name, value in values.items():
                # every rank has the same value (gathered eval set): sync_dist's mean leaves it exact
                self.log(f"{prefix}/{name}", value, prog_bar=(idx == 0 and name == self.task.main_metric),
                         add_dataloader_idx=False, sync_dist=distributed)
                self.final_metrics[f"{prefix}/{name}"] = float(value)
        self._eval_outputs.clear()
        self._method_eval.clear()
        self.final_metrics_step = self.global_step

    def optimizer_param_groups(self) -> list[dict]:
        """Methods' own groups first (their LR / weight decay), then decay and no-decay for the rest."""
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        wanted = {id(p) for _, p in trainable}
        claimed: set[int] = set()
        groups = []
        for spec in self.param_groups_spec:
            params = [p for p in spec.params if id(p) in wanted and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            group = {"params": params, "name": spec.name}
            if spec.lr is not None:
                group["lr"] = spec.lr
            if spec.weight_decay is not None:
                group["weight_decay"] = spec.weight_decay
            groups.append(group)
        rest = [(n, p) for n, p in trainable if id(p) not in claimed]
        groups.append({"params": [p for n, p in rest if not n.endswith(NO_DECAY)], "name": "decay"})
        groups.append({"params": [p for n, p in rest if n.endswith(NO_DECAY)], "weight_decay": 0.0,
                       "name": "no_decay"})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        optimizer = self.optim.optimizer(self.optimizer_param_groups())
        if self.optim.scheduler is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = self.optim.scheduler(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def model_size(self) -> dict[str, float]:
        report = size_report(self.model)
        return {"model/size_bits": float(report.total_bits), "model/size_mb": report.megabytes,
                "model/compression": report.compression_ratio}
