"""``early_exit=entropy``: DeeBERT / EdgeBERT entropy-based early exit.

An off-ramp after every encoder layer but the last (the model's own head serves the last). Training:

- ``two_stage`` (DeeBERT): the main stage trains the backbone and the final head as usual (off-ramps
  frozen); an ``offramps`` stage after it freezes everything else (activation observers included) and
  trains the off-ramps on the sum of their cross-entropies. Any other method's losses (distillation)
  apply in the main stage only: the off-ramps learn from the hard labels, as in DeeBERT.
- ``joint``: one stage, the task loss plus ``joint_weight`` × the sum of the off-ramps' losses.

Evaluation keeps every exit's logits from the one pass (``eval_outputs``) and turns them into the whole
threshold curve, the per-off-ramp scores and the operating points at ``tolerances`` points of loss
(``eval_metrics``, ``lowbit.algorithms.early_exit.curve``): no second pass per threshold. The threshold a
deployment uses (``threshold``, or the largest saving within ``deploy_tolerance`` points) is written
into the model (``ExitPolicy`` buffer), so checkpoints and exports carry it. ``deploy(..., "exit_runner")``
runs the encoder layer by layer and drops exited samples from the batch (``runner.ExitRunner``).

Once the weights are final, the off-ramp entropies of (a capped subset of) the training set are kept
(``<run dir>/early_exit/exit_predictor.pt``) and EdgeBERT's exit-layer lookup table is fitted on them
(``predictor``): the summary reports how well it predicts the dev set's exit layers at the deployed threshold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from lowbit.algorithms.early_exit.curve import (
    COLUMN_METRICS,
    ExitCurve,
    candidate_thresholds,
    column_metric,
    entropy,
    operating_points,
    threshold_curve,
)
from lowbit.algorithms.early_exit.offramp import POOLINGS, ExitPolicy, OffRamp
from lowbit.algorithms.early_exit.predictor import TABLE_KINDS, ExitPredictor, fit_predictor, predictor_report
from lowbit.errors import LowbitConfigError, check
from lowbit.methods import Method, RunInfo, Stage

TRAINING_MODES = ("two_stage", "joint")
INITS = ("random", "final_head")
CACHE_FILE = "exit_logits.pt"
PREDICTOR_FILE = "exit_predictor.pt"
PREDICTOR_OPTIONS = ("bins", "max_train_samples", "table")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_exit_cache(path: str | Path) -> dict:
    """An evaluation's cached exit logits (``<run dir>/early_exit/exit_logits.pt`` or that file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "early_exit" / CACHE_FILE if (path / "early_exit").is_dir() else path / CACHE_FILE
    check(path.is_file(), f"early_exit.scores_from={str(path)!r}: no cached exit logits there (a run with "
                          f"early_exit=entropy writes <run dir>/early_exit/{CACHE_FILE} at each evaluation)")
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line naming it
        raise LowbitConfigError(f"early_exit.scores_from={str(path)!r} is not a readable exit-logit cache: "
                                f"{type(e).__name__}") from None
    check(isinstance(cache, dict) and {"logits", "labels", "metric"} <= set(cache),
          f"early_exit.scores_from={str(path)!r} is not an exit-logit cache (needs logits, labels, metric)")
    return cache


class EntropyEarlyExit(Method):
    """Off-ramps on every layer but the last; exit at the first whose prediction entropy < S.

    ``threshold``: the S a deployment uses (null: the largest-saving S within ``deploy_tolerance`` points
    of the no-exit score on the dev set, chosen at each evaluation). ``curve_points``: thresholds of the
    logged curve (evenly spaced in [0, ln C]); operating points use the exact curve over every distinct
    entropy. ``scores_from``: a run dir (or cache file) whose cached exit logits answer this job without
    building or running a model (``hparams_search=entropy_threshold``: one Optuna trial per threshold at
    the cost of a few tensor ops). ``offramp_dropout`` null: the model's hidden dropout.

    ``predictor`` (null: off): EdgeBERT's exit-layer lookup table (``predictor.py``) — ``bins`` of the first
    off-ramp's entropy, fitted on at most ``max_train_samples`` training sentences (null: all), ``table``
    ``entropy`` (EdgeBERT's) or ``exit_layer``. ``latency_target_ms``: per-sentence targets the benchmark
    (``python -m lowbit.bench early_exit``, which measures the per-layer time) schedules the predicted layers to.
    """

    def __init__(self, training: str = "two_stage", offramp_epochs: int = 2, offramp_lr: float | None = None,
                 joint_weight: float = 1.0, threshold: float | None = None, deploy_tolerance: float = 1.0,
                 tolerances: Sequence[float] = (0.2, 1.0, 3.0, 5.0), curve_points: int = 100,
                 offramp_dropout: float | None = None, init: str = "random", scores_from: str | None = None,
                 metric: str | None = None, pooling: str = "cls", predictor: Mapping[str, Any] | None = None,
                 latency_target_ms: Sequence[float] = ()):
        check(training in TRAINING_MODES, f"early_exit.training must be one of {TRAINING_MODES}, got {training!r}")
        check(isinstance(offramp_epochs, int) and not isinstance(offramp_epochs, bool) and offramp_epochs >= 0,
              f"early_exit.offramp_epochs must be a non-negative integer, got {offramp_epochs!r}")
        check(training == "joint" or offramp_epochs > 0,
              "early_exit.offramp_epochs must be > 0 with early_exit.training=two_stage (the off-ramps train "
              "only in that stage)")
        check(offramp_lr is None or (_number(offramp_lr) and offramp_lr > 0),
              f"early_exit.offramp_lr must be positive or null, got {offramp_lr!r}")
        check(_number(joint_weight) and joint_weight >= 0, f"early_exit.joint_weight must be >= 0, got {joint_weight!r}")
        check(threshold is None or (_number(threshold) and threshold >= 0),
              f"early_exit.threshold must be >= 0 (nats) or null, got {threshold!r}")
        check(_number(deploy_tolerance) and deploy_tolerance >= 0,
              f"early_exit.deploy_tolerance must be >= 0 (points), got {deploy_tolerance!r}")
        tolerances = tuple(tolerances)
        check(len(tolerances) > 0 and all(_number(t) and t >= 0 for t in tolerances),
              f"early_exit.tolerances must be a non-empty list of numbers >= 0 (points), got {list(tolerances)!r}")
        check(isinstance(curve_points, int) and not isinstance(curve_points, bool) and curve_points >= 2,
              f"early_exit.curve_points must be an integer >= 2, got {curve_points!r}")
        check(offramp_dropout is None or (_number(offramp_dropout) and 0 <= offramp_dropout < 1),
              f"early_exit.offramp_dropout must be in [0, 1) or null, got {offramp_dropout!r}")
        check(init in INITS, f"early_exit.init must be one of {INITS}, got {init!r}")
        check(pooling in POOLINGS, f"early_exit.pooling must be one of {POOLINGS}, got {pooling!r}")
        check(metric is None or metric in COLUMN_METRICS,
              f"early_exit.metric must be null (the task's main metric) or one of {sorted(COLUMN_METRICS)}, got {metric!r}")
        check(predictor is None or (isinstance(predictor, Mapping) and set(predictor) <= set(PREDICTOR_OPTIONS)),
              f"early_exit.predictor must be null or a mapping with keys {PREDICTOR_OPTIONS}, got {predictor!r}")
        predictor = None if predictor is None else dict(predictor)
        if predictor is not None:
            bins, cap, kind = predictor.get("bins", 50), predictor.get("max_train_samples"), predictor.get("table", "entropy")
            check(_count(bins) and bins >= 1, f"early_exit.predictor.bins must be an integer >= 1, got {bins!r}")
            check(cap is None or (_count(cap) and cap >= 1),
                  f"early_exit.predictor.max_train_samples must be a positive integer or null (all), got {cap!r}")
            check(kind in TABLE_KINDS, f"early_exit.predictor.table must be one of {TABLE_KINDS}, got {kind!r}")
            predictor = {"bins": bins, "max_train_samples": cap, "table": kind}
        targets = list(latency_target_ms) if isinstance(latency_target_ms, Sequence) and \
            not isinstance(latency_target_ms, str) else None
        check(targets is not None and all(_number(t) and t > 0 for t in targets),
              f"early_exit.latency_target_ms must be a list of positive numbers (ms), got {latency_target_ms!r}")
        self.predictor_options: dict[str, Any] | None = predictor
        self.latency_target_ms = tuple(float(t) for t in targets)
        #: off-ramp entropies [n, L-1] of the training subset, once the weights are final (ExitCurveCallback)
        self.train_entropies: torch.Tensor | None = None
        self.training, self.offramp_epochs, self.offramp_lr = training, offramp_epochs, offramp_lr
        self.joint_weight, self.threshold, self.deploy_tolerance = float(joint_weight), threshold, float(deploy_tolerance)
        self.tolerances, self.curve_points = tuple(float(t) for t in tolerances), curve_points
        self.offramp_dropout, self.init, self.scores_from = offramp_dropout, init, scores_from
        self.ramps: list[OffRamp] = []
        self.policy: ExitPolicy | None = None
        self.n_layers = 0
        #: (logits, labels, curve) of each eval set of the latest validation (MNLI: matched, mismatched)
        self.evals: list[tuple[torch.Tensor, torch.Tensor, ExitCurve]] = []
        self._eval_calls = 0
        self.metric_option, self.pooling = metric, pooling
        self.metric = metric or "acc"
        self.points: list = []

    # -- before training ---------------------------------------------------------------------
    def check_ready(self, run: RunInfo) -> None:
        check(run.num_labels is None or run.num_labels > 1,
              "early_exit=entropy needs a classification task: the entropy of a regression output (STS-B) is "
              "undefined")

    def stages(self) -> list[Stage]:
        if self.training != "two_stage":
            return []
        return [Stage("offramps", self.offramp_epochs, position="after", lr=self.offramp_lr,
                      trainable=lambda model: [p for ramp in self.ramps for p in ramp.parameters()],
                      losses=("early_exit",), freeze_observers=True,
                      # the final head does not change in this stage: keep the epoch whose off-ramps save most
                      # within the deployment's tolerance
                      monitor="val/exit_saving")]

    def prepare(self, model: nn.Module, edit) -> None:
        config = model.config
        check(config.num_labels > 1, "early_exit=entropy needs a classification task: the entropy of a regression "
                                     "output (STS-B) is undefined")
        self.n_layers = int(config.num_hidden_layers)
        check(self.n_layers >= 2, f"early_exit=entropy needs >= 2 encoder layers, the model has {self.n_layers}")
        dropout = self.offramp_dropout
        if dropout is None:
            dropout = float(getattr(config, "classifier_dropout", None) or config.hidden_dropout_prob)
        head = self._final_head_linears(edit) if self.init == "final_head" else None
        self.ramps = []
        for i in range(self.n_layers - 1):
            ramp = OffRamp(config.hidden_size, config.num_labels, dropout, self.pooling)
            if head is None:
                model._init_weights(ramp.pooler)  # the backbone's own init (normal, std initializer_range)
                model._init_weights(ramp.classifier)
            else:
                with torch.no_grad():
                    ramp.pooler.weight.copy_(head[0].weight)
                    ramp.pooler.bias.copy_(head[0].bias)
                    ramp.classifier.weight.copy_(head[1].weight)
                    ramp.classifier.bias.copy_(head[1].bias)
            ramp.to(next(model.parameters()).device)
            edit.add_module(f"exit_{i}", ramp, role=f"exit.{i}")
            if self.training == "two_stage":
                ramp.requires_grad_(False)  # trained only in the off-ramp stage
            self.ramps.append(ramp)
        self._initial = [p.detach().clone() for ramp in self.ramps for p in ramp.parameters()]
        self.policy = ExitPolicy()
        if self.threshold is not None:
            self.policy.threshold.fill_(float(self.threshold))
        edit.add_module("exit_policy", self.policy, role="exit_policy")

    @staticmethod
    def _final_head_linears(edit) -> tuple[nn.Linear, nn.Linear]:
        """The model's own head as (H -> H, H -> C) Linears: BERT/ALBERT pooler + classifier, RoBERTa's
        classifier.dense + classifier.out_proj."""
        linears = [t.module for t in edit.targets("pooler", "classifier") if isinstance(t.module, nn.Linear)]
        check(len(linears) >= 2, "early_exit.init=final_head: the model has no pooler + classifier Linears to copy")
        return linears[0], linears[-1]

    # -- training ----------------------------------------------------------------------------
    def forward_kwargs(self, mode: str) -> dict[str, Any]:
        return {"output_hidden_states": True}

    def ramp_logits(self, hidden_states: Sequence[torch.Tensor],
                    attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Off-ramp logits from a forward's ``hidden_states`` (embeddings, layer 1, ..., layer L)."""
        check(hidden_states is not None and len(hidden_states) == self.n_layers + 1,
              "early_exit: the model did not return every layer's hidden states")
        return [ramp(hidden_states[i + 1], attention_mask) for i, ramp in enumerate(self.ramps)]

    def _ramps_train(self) -> bool:
        return any(p.requires_grad for ramp in self.ramps for p in ramp.parameters())

    def loss_terms(self):
        return [self.exit_losses]

    def exit_losses(self, out: Any, batch: Mapping[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        if not self._ramps_train():
            # two-stage main stage: the off-ramps do not train, but run without gradient so activation
            # observers on their inputs (a quantizer) see the data before the off-ramp stage freezes them
            with torch.no_grad():
                self.ramp_logits(out.hidden_states, batch.get("attention_mask"))
            return {}
        labels = batch["labels"]
        loss = sum(nn.functional.cross_entropy(logits, labels)
                   for logits in self.ramp_logits(out.hidden_states, batch.get("attention_mask")))
        weight = self.joint_weight if self.training == "joint" else 1.0
        return {"exits": weight * loss}

    # -- evaluation --------------------------------------------------------------------------
    def eval_outputs(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = [*self.ramp_logits(outputs.hidden_states, batch.get("attention_mask")), outputs.logits]
        return {"logits": torch.stack([x.detach().float() for x in logits], dim=1)}

    def grid(self, num_labels: int) -> torch.Tensor:
        """The logged curve's thresholds: evenly spaced on [0, ln C] (entropy's range)."""
        return torch.linspace(0.0, math.log(num_labels), self.curve_points, dtype=torch.float64)

    def eval_metrics(self, collected: dict[str, torch.Tensor], labels: torch.Tensor, task) -> dict[str, float]:
        logits = collected["logits"]
        self.metric = self.metric_option or task.main_metric
        curve = threshold_curve(logits, labels, self.grid(logits.shape[-1]), self.metric)
        # a validation calls this once per eval set, in order (MNLI: matched, then mismatched); counting the calls
        # finds the main dev set without a callback (an extra stage's trainer runs none of the method's)
        eval_sets = len(getattr(task, "eval_splits", None) or ("validation",))
        main = self._eval_calls % eval_sets == 0
        self._eval_calls += 1
        if main:
            self.evals.clear()
        self.evals.append((logits, labels, curve))
        exact = threshold_curve(logits, labels, candidate_thresholds(logits), self.metric)
        points = operating_points(exact, self.tolerances)
        out: dict[str, float] = {}
        for i in range(logits.shape[1]):
            preds = logits[:, i].argmax(-1, keepdim=True)
            out[f"exit/layer_{i + 1}_{self.metric}"] = float(column_metric(self.metric, preds, labels)[0])
        base = float(exact.score[0])  # S = 0: no exit
        for p in points:
            key = f"{p.tolerance:g}"
            out.update({f"exit/threshold@{key}": p.threshold, f"exit/{self.metric}@{key}": p.score,
                        f"exit/delta@{key}": p.score - base, f"exit/saving@{key}": p.saving})
        if main:  # the main dev set chooses the deployed threshold
            self.points = points
            chosen = self.threshold
            if chosen is None:
                chosen = operating_points(exact, (self.deploy_tolerance,))[0].threshold
            if self.policy is not None:
                self.policy.threshold.fill_(float(chosen))
        at = self.deployed_threshold()
        if at is not None:
            score, saving = self.score_at(logits, labels, at)
            out.update({"exit_score": score, "exit_saving": saving, "exit_threshold": at})
        return out

    def deployed_threshold(self) -> float | None:
        if self.threshold is not None:
            return float(self.threshold)
        return None if self.policy is None else self.policy.chosen()

    def score_at(self, logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> tuple[float, float]:
        curve = threshold_curve(logits, labels, torch.tensor([float(threshold)]), self.metric)
        return float(curve.score[0]), float(curve.saving[0])

    # -- sweeps from cached logits -------------------------------------------------------------
    def cached_metrics(self) -> dict[str, float] | None:
        """``scores_from`` set: the summary keys a trained run reports at ``threshold`` (``score``,
        ``saving``; the pipeline prefixes ``early_exit/``), from a run's cached exit logits, without building
        or running a model."""
        if self.scores_from is None:
            return None
        check(self.threshold is not None, "early_exit.scores_from needs early_exit.threshold (the S to score)")
        cache = load_exit_cache(self.scores_from)
        self.metric = self.metric_option or str(cache["metric"])
        score, saving = self.score_at(cache["logits"], cache["labels"], float(self.threshold))
        base, _ = self.score_at(cache["logits"], cache["labels"], 0.0)
        return {"score": score, "saving": saving, "threshold": float(self.threshold),
                "score_loss_points": 100.0 * (base - score)}

    # -- exit-layer predictor (EdgeBERT) ----------------------------------------------------------
    def fitted_predictor(self) -> tuple[ExitPredictor, dict] | None:
        """The lookup table fitted on the kept training entropies at the deployed threshold, and its report on the
        latest main dev set; None before the training entropies are kept (or with ``predictor: null``)."""
        at = self.deployed_threshold()
        if self.predictor_options is None or self.train_entropies is None or not self.evals or at is None:
            return None
        logits, labels, _ = self.evals[0]
        predictor = fit_predictor(self.train_entropies, int(logits.shape[-1]), at, self.predictor_options["bins"],
                                  self.predictor_options["table"])
        return predictor, predictor_report(predictor, logits, labels, self.metric)

    # -- run hooks -----------------------------------------------------------------------------
    def callbacks(self) -> list:
        return [ExitCurveCallback(self)]

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        if backend == "exit_runner":
            from lowbit.algorithms.early_exit.runner import ExitRunner

            return ExitRunner(model)
        check(backend != "int8_cpu", "early_exit=entropy does not run on the int8_cpu engine yet (it runs the "
                                     "whole encoder); deploy with --backend exit_runner or fake")
        return model

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"training": self.training, "offramps": len(self.ramps),
                               "threshold": self.deployed_threshold()}
        if self.ramps:
            params = [p for ramp in self.ramps for p in ramp.parameters()]
            out["offramps_trained"] = any(not torch.equal(p.detach().cpu(), p0.cpu())
                                          for p, p0 in zip(params, self._initial))
        if self.evals:
            logits, labels, curve = self.evals[0]
            at = self.deployed_threshold()
            if at is not None:  # what a sweep over thresholds x bits optimises: early_exit/score, early_exit/saving
                out["score"], out["saving"] = self.score_at(logits, labels, at)
            out["curve"] = curve.rows()
            base = float(curve.score[torch.argmin(curve.thresholds)])
            out["score_no_exit"] = base
            for p in self.points:
                key = f"{p.tolerance:g}"
                out.update({f"threshold@{key}": p.threshold, f"{self.metric}@{key}": p.score,
                            f"delta@{key}": p.score - base, f"saving@{key}": p.saving})
        fitted = self.fitted_predictor()
        if fitted is not None:
            out.update({f"predictor/{k}": v for k, v in fitted[1].items()})
            out["predictor/train_sentences"] = int(self.train_entropies.shape[0])
        return out


@torch.no_grad()
def training_set_entropies(module: pl.LightningModule, method: EntropyEarlyExit, datamodule,
                           max_samples: int | None, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Off-ramp entropies ``[n, L−1]`` of the run's training split (a seeded random subset of ``max_samples`` rows,
    in dataset order), from one eval-mode pass without gradient (observers do not move); and the rows used."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    train = datamodule.splits[datamodule.task.train_split]
    rows = list(range(len(train)))
    if max_samples is not None and max_samples < len(rows):
        rows = sorted(random.Random(seed).sample(rows, max_samples))
    loader = DataLoader(train.select(rows).with_format("torch"), batch_size=datamodule.eval_batch_size,
                        collate_fn=DataCollatorWithPadding(datamodule.tokenizer, return_tensors="pt"))
    was_training = module.training
    module.eval()
    try:
        kept = []
        for batch in loader:
            batch = {k: v.to(module.device) for k, v in batch.items()}
            logits = method.eval_outputs(module(batch, "eval"), batch)["logits"]
            kept.append(entropy(logits[:, :-1]).cpu())
    finally:
        module.train(was_training)
    return torch.cat(kept), rows


class ExitCurveCallback(pl.Callback):
    """Per validation: resets the method's per-eval-set store before (a validation cut short stays harmless), and after writes the main dev set's
    exit logits (``<run dir>/early_exit/exit_logits.pt``, what ``scores_from`` and the benchmark read) and
    logs the threshold curve to W&B as a table and a line plot (accuracy vs expected saving).

    Once the weights are final, keeps the training set's off-ramp entropies for the exit-layer predictor
    (``<run dir>/early_exit/exit_predictor.pt``) and logs its table and miss counts to W&B."""

    def __init__(self, method: EntropyEarlyExit):
        self.method = method
        self._predictor_step: int | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        # without after-stages (joint) the weights are final now, unless training ended between validations: then
        # the pipeline's closing validation (below) refreshes the dev logits first; with after-stages (two_stage)
        # the off-ramps train later and the closing validation is the moment too
        if not self.method.stages() and getattr(pl_module, "final_metrics_step", None) == trainer.global_step:
            self._keep_train_entropies(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.method.evals.clear()
        self.method._eval_calls = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.method.evals or not trainer.is_global_zero or trainer.sanity_checking:
            return
        logits, labels, curve = self.method.evals[0]
        directory = Path(trainer.default_root_dir) / "early_exit"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (CACHE_FILE + ".tmp")
        torch.save({"logits": logits, "labels": labels, "metric": self.method.metric,
                    "threshold": self.method.deployed_threshold(), "step": trainer.global_step}, tmp)
        tmp.replace(directory / CACHE_FILE)
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                rows = curve.rows()
                columns = list(rows[0])
                table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
                logger.experiment.log({
                    "early_exit/curve": table,
                    "early_exit/score_vs_saving": wandb.plot.line(table, "expected_saving", curve.metric,
                                                                  title=f"{curve.metric} vs expected saving"),
                    "trainer/global_step": trainer.global_step})
        if trainer.state.fn == TrainerFn.VALIDATING:  # the pipeline's closing validation: the final weights
            self._keep_train_entropies(trainer, pl_module)

    def _keep_train_entropies(self, trainer, pl_module) -> None:
        options = self.method.predictor_options
        if (options is None or not trainer.is_global_zero or trainer.datamodule is None
                or self._predictor_step == trainer.global_step):
            return
        entropies, rows = training_set_entropies(pl_module, self.method, trainer.datamodule,
                                                 options["max_train_samples"])
        self.method.train_entropies = entropies
        self._predictor_step = trainer.global_step
        fitted = self.method.fitted_predictor()
        directory = Path(trainer.default_root_dir) / "early_exit"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (PREDICTOR_FILE + ".tmp")
        record = {"train_entropies": entropies, "train_rows": torch.tensor(rows), "step": trainer.global_step, **options}
        if fitted is not None:
            predictor, report = fitted
            record.update(threshold=predictor.threshold, fitted_table=predictor.table, bin_counts=predictor.counts)
        torch.save(record, tmp)
        tmp.replace(directory / PREDICTOR_FILE)
        if fitted is None:
            return
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                rows_out = predictor.rows()
                columns = list(rows_out[0])
                misses = sorted((int(k), v) for k, v in report["miss_counts"].items())
                logger.experiment.log({
                    "early_exit/exit_predictor": wandb.Table(columns=columns,
                                                             data=[[r[c] for c in columns] for r in rows_out]),
                    "early_exit/predictor_miss": wandb.Table(columns=["predicted_minus_actual_layers", "sentences"],
                                                             data=[list(m) for m in misses]),
                    "trainer/global_step": trainer.global_step})
