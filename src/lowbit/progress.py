"""Plain-text training progress for runs without a progress bar (tables, sweeps, ``nohup``, CI logs).

A Rich/TQDM bar redraws one line: in a log file it is noise, and with ``trainer.enable_progress_bar=false``
(every ``lowbit.tables`` row) a long run printed nothing between its model summary and its result. ``TextProgress``
writes one line every ``every_seconds`` (and every ``every_n_steps`` optimizer steps, if set) —
``[label] epoch 2/3 step 150/480 (31%) loss 0.512 lr 8.1e-05 1.23 s/step ETA 6m45s`` — and one per validation
with its ``val*`` metrics. Beside a progress bar on a terminal it stays silent unless ``with_progress_bar=true``
(a bar whose output goes to a file or a pipe shows nothing there, so the lines are written then).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from lowbit.errors import check

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1h02m'``, ``405`` -> ``'6m45s'``, ``9.4`` -> ``'9s'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _scalar(value: Any) -> float | None:
    try:
        v = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):  # a non-scalar tensor or a non-number
        return None
    return v if math.isfinite(v) else None


def _epochs(trainer: pl.Trainer) -> str:
    """The epoch budget, or ``?`` when training is bounded by steps or time (``max_epochs`` None or -1)."""
    n = trainer.max_epochs
    return str(n) if n is not None and n >= 0 else "?"


class TextProgress(pl.Callback):
    """One log line per ``every_seconds`` (and/or ``every_n_steps``) of training, and one per validation.

    Args:
        every_seconds: at most one step line per this many seconds of wall time (0: no time trigger).
        every_n_steps: also a line every this many optimizer steps (0: no step trigger).
        label: the line's prefix (e.g. a stage name); default: the trainer's logger name or ``train``.
        with_progress_bar: also write lines when the trainer shows a progress bar on a terminal.
    """

    def __init__(self, every_seconds: float = 60.0, every_n_steps: int = 0, label: str | None = None,
                 with_progress_bar: bool = False):
        check(isinstance(every_seconds, (int, float)) and not isinstance(every_seconds, bool) and every_seconds >= 0,
              f"callbacks.text_progress.every_seconds must be a number >= 0, got {every_seconds!r}")
        check(isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool) and every_n_steps >= 0,
              f"callbacks.text_progress.every_n_steps must be an integer >= 0, got {every_n_steps!r}")
        check(every_seconds > 0 or every_n_steps > 0,
              "callbacks.text_progress: every_seconds and every_n_steps are both 0: it would never write a step line")
        self.every_seconds = float(every_seconds)
        self.every_n_steps = every_n_steps
        self.label = label
        self.with_progress_bar = with_progress_bar
        self._active = False
        self._clock = time.monotonic  # a seam for tests: the lines' timing without sleeping

    def _emit(self, message: str) -> None:
        # tables run rows in-process without logging set up: give the module logger a handler of its own then
        if not log.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
            log.propagate = False
        if log.level == logging.NOTSET:  # a root logger at WARNING would drop the lines the callback is there for
            log.setLevel(logging.INFO)
        log.info(message)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a bar writing to a pipe or file (nohup, a table row's log, CI) shows nothing until it ends: write lines
        bar_visible = trainer.progress_bar_callback is not None and sys.stdout.isatty()
        self._active = trainer.is_global_zero and (self.with_progress_bar or not bar_visible)
        if not self._active:
            return
        self._tag = self.label or (trainer.logger.name if trainer.logger is not None and trainer.logger.name else "train")
        total = trainer.estimated_stepping_batches
        self._total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) else None
        self._t0 = self._last_t = self._clock()
        self._step0 = self._last_step = trainer.global_step  # a resumed run's rate counts only its own steps
        self._emit(f"[{self._tag}] training: {self._of(trainer.global_step)} steps, "
                   f"{_epochs(trainer)} epoch(s)")

    def _of(self, step: int) -> str:
        if self._total:
            return f"{step}/{self._total} ({100 * step / self._total:.0f}%)"
        return str(step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._active:
            return
        step, now = trainer.global_step, self._clock()
        if step == self._last_step:  # inside gradient accumulation: no optimizer step yet
            return
        by_steps = self.every_n_steps > 0 and step % self.every_n_steps == 0
        by_time = self.every_seconds > 0 and now - self._last_t >= self.every_seconds
        if not (by_steps or by_time):
            return
        self._last_t, self._last_step = now, step
        done = step - self._step0
        per_step = (now - self._t0) / done if done > 0 else float("nan")
        parts = [f"[{self._tag}] epoch {trainer.current_epoch + 1}/{_epochs(trainer)} step {self._of(step)}"]
        loss = _scalar(outputs.get("loss")) if isinstance(outputs, dict) else _scalar(outputs)
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if math.isfinite(per_step):
            parts.append(f"{per_step:.3g} s/step")
            if self._total:
                parts.append(f"ETA {format_duration(per_step * (self._total - step))}")
        self._emit(" ".join(parts))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or trainer.sanity_checking:
            return
        # val/acc, val_mm/acc, finetune/val/acc...: a name with a component starting with "val"
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()
                   if any(part.startswith("val") for part in k.split("/"))}
        shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if v is not None)
        # trainer.validate() after fit (a stage's or the run's final evaluation): the epoch counter has moved on
        when = (f"after epoch {trainer.current_epoch + 1}, step {trainer.global_step}" if trainer.state.fn == TrainerFn.FITTING else f"(final, step {trainer.global_step})")
        self._emit(f"[{self._tag}] validation {when}: {shown or '(no val metrics)'}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._emit(f"[{self._tag}] training done: {trainer.global_step - self._step0} steps in "
                       f"{format_duration(self._clock() - self._t0)}")
