"""``python -m lowbit.deploy CKPT --backend int8_cpu``: deploy a trained run and check it on its dev set.

The run's checkpoint is rebuilt through the one model builder (as ``lowbit.export``), converted by the
backend, and both the fake-quant model and the deployed one run over the run's dev split: accuracy of
each, how many predictions agree, the largest logit difference. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lowbit.errors import LowbitConfigError

DATA_TARGETS = ("lowbit.data.GLUEDataModule", "lowbit.data.glue.GLUEDataModule")


def dev_loader(cfg, max_eval_samples: int | None = None):
    """The first dev split's loader of a run's config: its data settings, without its Hydra-time paths
    (``${hydra:...}``), its cache dir or any data module but lowbit's (a config read from a file)."""
    from omegaconf import OmegaConf

    from lowbit.builder import build
    from lowbit.errors import check

    data_cfg = OmegaConf.to_container(cfg.data, resolve=False)
    check(data_cfg.get("_target_") in DATA_TARGETS,
          f"run config: data._target_={data_cfg.get('_target_')!r} is not lowbit's GLUE data module; refused")
    data_cfg["cache_dir"] = None
    data = build(OmegaConf.create(data_cfg), tokenizer=build(cfg.model).load_tokenizer())
    data.max_eval_samples = max_eval_samples
    data.check_sources()
    data.setup("validate")
    loaders = data.val_dataloader()
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def evaluate_deployed(ckpt: Path, backend: str = "int8_cpu", config: Path | None = None,
                      max_eval_samples: int | None = None, batch_size: int = 32,
                      predictions_file: Path | None = None) -> dict:
    """Both models over the dev split: the task's own metrics of each (accuracy; F1, MCC; Pearson / Spearman for
    STS-B), how many predictions agree (classification: the same class; regression: the same value), the largest
    logit difference. ``predictions_file``: both models' logits and the labels, as ``torch.save`` of tensors."""
    from lowbit.data import GLUE_TASKS, compute_metrics
    from lowbit.data.metrics import predictions
    from lowbit.deploy import deploy
    from lowbit.export.__main__ import load_run_checkpoint

    model, methods, cfg = load_run_checkpoint(ckpt, config)
    model.eval()
    engine = deploy(model, methods, backend)
    task = GLUE_TASKS.get(cfg.data.task)
    loader = dev_loader(cfg, max_eval_samples)
    fakes, deployeds, labels = [], [], []
    t_fake, t_engine = 0.0, 0.0
    with torch.no_grad():
        for batch in loader:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            t0 = time.perf_counter()
            fake = model(**inputs).logits
            t1 = time.perf_counter()
            deployed = engine(**inputs) if backend != "fake" else engine(**inputs).logits
            t2 = time.perf_counter()
            t_fake, t_engine = t_fake + t1 - t0, t_engine + t2 - t1
            fakes.append(fake.float())
            deployeds.append(deployed.float())
            labels.append(batch["labels"])
    fake, deployed, label = torch.cat(fakes), torch.cat(deployeds), torch.cat(labels)
    pred_fake, pred_deployed = predictions(fake, task.is_regression), predictions(deployed, task.is_regression)
    metrics_fake = compute_metrics(task.metrics, pred_fake, label)
    metrics_deployed = compute_metrics(task.metrics, pred_deployed, label)
    if predictions_file is not None:
        predictions_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"logits_fake": fake, "logits_deployed": deployed, "labels": label}, predictions_file)
    result = {"checkpoint": str(ckpt), "backend": backend, "task": cfg.data.task, "examples": len(label),
              "predictions_equal": int((pred_fake == pred_deployed).sum()),
              "metrics_fake": metrics_fake, "metrics_deployed": metrics_deployed,
              "max_abs_logit_diff": float((fake - deployed).abs().max()) if len(label) else 0.0,
              "seconds_fake_eager": t_fake, "seconds_deployed": t_engine}
    if "acc" in task.metrics:  # the keys earlier results were written with
        result.update(accuracy_fake=metrics_fake["acc"], accuracy_deployed=metrics_deployed["acc"])
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lowbit.deploy", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path, help="a run's checkpoint (<run>/checkpoints/best.ckpt)")
    p.add_argument("--backend", default="int8_cpu")
    p.add_argument("--config", type=Path, default=None, help="the run's config (default: <run>/.hydra/config.yaml)")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--predictions", type=Path, default=None,
                   help="save both models' dev logits and the labels here (torch.save), for analysis")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    from lowbit.deploy import BACKENDS

    try:
        BACKENDS.get(a.backend)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: --backend: {e}") from None
    try:
        result = evaluate_deployed(a.ckpt, a.backend, a.config, a.max_eval_samples,
                                   predictions_file=a.predictions)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: {e}") from None
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
