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
                      max_eval_samples: int | None = None, batch_size: int = 32) -> dict:
    from lowbit.deploy import deploy
    from lowbit.export.__main__ import load_run_checkpoint

    model, methods, cfg = load_run_checkpoint(ckpt, config)
    model.eval()
    engine = deploy(model, methods, backend)
    loader = dev_loader(cfg, max_eval_samples)
    n = agree = correct_fake = correct_engine = 0
    max_diff, t_fake, t_engine = 0.0, 0.0, 0.0
    with torch.no_grad():
        for batch in loader:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            t0 = time.perf_counter()
            fake = model(**inputs).logits
            t1 = time.perf_counter()
            deployed = engine(**inputs) if backend != "fake" else engine(**inputs).logits
            t2 = time.perf_counter()
            t_fake, t_engine = t_fake + t1 - t0, t_engine + t2 - t1
            labels = batch["labels"]
            n += len(labels)
            if fake.shape[-1] > 1:
                agree += int((fake.argmax(-1) == deployed.argmax(-1)).sum())
                correct_fake += int((fake.argmax(-1) == labels).sum())
                correct_engine += int((deployed.argmax(-1) == labels).sum())
            max_diff = max(max_diff, float((fake - deployed).abs().max()))
    return {"checkpoint": str(ckpt), "backend": backend, "task": cfg.data.task, "examples": n,
            "predictions_equal": agree, "accuracy_fake": correct_fake / n, "accuracy_deployed": correct_engine / n,
            "max_abs_logit_diff": max_diff, "seconds_fake_eager": t_fake, "seconds_deployed": t_engine}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lowbit.deploy", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path, help="a run's checkpoint (<run>/checkpoints/best.ckpt)")
    p.add_argument("--backend", default="int8_cpu")
    p.add_argument("--config", type=Path, default=None, help="the run's config (default: <run>/.hydra/config.yaml)")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    from lowbit.deploy import BACKENDS

    try:
        BACKENDS.get(a.backend)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: --backend: {e}") from None
    try:
        result = evaluate_deployed(a.ckpt, a.backend, a.config, a.max_eval_samples)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: {e}") from None
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
