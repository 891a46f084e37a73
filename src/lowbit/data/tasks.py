"""GLUE task specifications: text columns, label count, metrics, eval splits."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.registry import Registry


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_keys: tuple[str, str | None]
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    train_split: str = "train"

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def default_metric(self) -> str:
        """The task's default ``optimized_metric`` (``val/<main metric>``; ``conf/data/<task>.yaml`` sets the same)."""
        return f"val/{self.main_metric}"

    def logged_metrics(self) -> tuple[str, ...]:
        """Every dev metric a run of this task logs: ``<eval prefix>/<metric>`` (MNLI: ``val/acc``, ``val_mm/acc``)."""
        return tuple(f"{self.eval_prefix(i)}/{m}" for i in range(len(self.eval_splits)) for m in self.metrics)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def eval_prefix(self, index: int) -> str:
        """Metric namespace of eval split ``index``: ``val`` for the first, then ``val_<suffix>``."""
        if index == 0:
            return "val"
        split = self.eval_splits[index]
        return "val_mm" if split == "validation_mismatched" else f"val_{split}"


GLUE_TASKS: Registry[GlueTask] = Registry("GLUE task (data.task)")
for _t in (
    GlueTask("sst2", ("sentence", None), 2, ("acc",)),
    GlueTask("mnli", ("premise", "hypothesis"), 3, ("acc",), ("validation_matched", "validation_mismatched")),
    GlueTask("qnli", ("question", "sentence"), 2, ("acc",)),
    GlueTask("qqp", ("question1", "question2"), 2, ("acc", "f1")),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("f1", "acc")),
    GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman")),
    GlueTask("cola", ("sentence", None), 2, ("mcc",)),
    GlueTask("rte", ("sentence1", "sentence2"), 2, ("acc",)),
):
    GLUE_TASKS.register(_t.name, _t)
