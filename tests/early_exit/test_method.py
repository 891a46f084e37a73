"""early_exit=entropy in runs: stages, losses, quantized off-ramps, cached sweeps, combinations, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN
from omegaconf import OmegaConf

from lowbit.algorithms.early_exit import EntropyEarlyExit, load_exit_cache, threshold_curve
from lowbit.errors import LowbitConfigError

#: a short real run (not fast_dev_run: checkpoints, stages and the final evaluation all happen)
RUN = ["model=tiny", "logger=csv", "callbacks=default", "trainer.max_epochs=1", "data.max_train_samples=32",
       "data.max_eval_samples=32", "data.batch_size=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "early_exit=entropy", "early_exit.offramp_epochs=1"]


def backbone_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lowbit_modules" not in k}


def test_two_stage_trains_only_the_offramps_in_the_second_stage(make_cfg):
    from lowbit.pipeline import run_stage, setup

    job = setup(make_cfg(RUN))
    method: EntropyEarlyExit = job.methods["early_exit"]
    ramps_before = [p.clone() for r in method.ramps for p in r.parameters()]
    job.trainer.fit(job.module, datamodule=job.datamodule)
    # main stage: the off-ramps did not move, the backbone did
    assert all(torch.equal(a, b) for a, b in zip(ramps_before, [p for r in method.ramps for p in r.parameters()]))
    assert "exits" not in job.module.last_loss_terms
    backbone = backbone_state(job.model)
    (_, stage), = [s for s in [("early_exit", s) for s in method.stages()]]
    assert stage.losses == ("early_exit",) and stage.freeze_observers
    metrics = run_stage(stage, job.model, job.methods, job.datamodule, job.cfg, job.optim)
    after = backbone_state(job.model)
    assert all(torch.equal(backbone[k], after[k]) for k in backbone), "the backbone moved in the off-ramp stage"
    assert not all(torch.equal(a, b) for a, b in zip(ramps_before, [p for r in method.ramps for p in r.parameters()]))
    assert "offramps/val/exit/layer_1_acc" in metrics
    # requires_grad restored: the off-ramps are frozen again, the backbone trainable
    assert not any(p.requires_grad for r in method.ramps for p in r.parameters())


def test_joint_training_adds_the_offramp_losses_in_one_stage(make_cfg):
    from lowbit.pipeline import train

    result = train(make_cfg([*RUN, "early_exit.training=joint", "early_exit.joint_weight=0.5"]))
    m = result.metrics
    assert m["train/loss_exits"] > 0 and m["train/loss_task"] > 0
    assert not any(k.startswith("offramps/") for k in m)
    assert m["early_exit/offramps_trained"] is True


def test_run_writes_curve_cache_threshold_and_checkpoint_carries_it(make_cfg):
    from lowbit.export.__main__ import load_run_checkpoint
    from lowbit.pipeline import train

    cfg = make_cfg([*RUN, "early_exit.curve_points=25"])
    result = train(cfg)
    m = result.metrics
    curve = m["early_exit/curve"]
    assert len(curve) == 25 and curve[0]["threshold"] == 0.0
    assert {"threshold", "acc", "expected_saving", "exits_layer_1", "exits_layer_2"} <= set(curve[0])
    for tol in ("0.2", "1", "3"):
        assert f"early_exit/saving@{tol}" in m and f"val/exit/threshold@{tol}" in m
    assert m["val/exit_score"] >= m["val/acc"] - 0.01 - 1e-9  # deploy_tolerance = 1 point
    run_dir = Path(cfg.paths.output_dir)
    cache = load_exit_cache(run_dir)
    assert cache["logits"].shape == (32, 2, 2) and cache["labels"].shape == (32,)
    assert cache["threshold"] == pytest.approx(m["early_exit/threshold"])
    # the curve in the summary is the cache's curve
    again = threshold_curve(cache["logits"], cache["labels"], torch.tensor([r["threshold"] for r in curve]))
    assert [round(float(s), 9) for s in again.score] == [round(r["acc"], 9) for r in curve]
    # the chosen threshold travels with the weights
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    model, _, _ = load_run_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    policy = model.lowbit_modules["exit_policy"]
    assert policy.chosen() == pytest.approx(m["early_exit/threshold"])


def test_scores_from_cache_answers_a_trial_without_a_model(make_cfg, monkeypatch):
    from lowbit.models import ModelSpec
    from lowbit.pipeline import run, train

    cfg = make_cfg(RUN)
    train(cfg)
    run_dir = cfg.paths.output_dir
    cache = load_exit_cache(run_dir)
    monkeypatch.setattr(ModelSpec, "build", lambda *a, **k: pytest.fail("a cached trial built a model"))
    trial = make_cfg([*RUN, f"early_exit.scores_from={run_dir}", "early_exit.threshold=0.6",
                      "objectives=[early_exit/score,early_exit/saving]", "paths.output_dir=" + str(Path(run_dir) / "t")])
    score, saving = run(trial)
    want = threshold_curve(cache["logits"], cache["labels"], torch.tensor([0.6]))
    assert score == pytest.approx(float(want.score[0])) and saving == pytest.approx(float(want.saving[0]))


def test_mean_pooling_offramp_ignores_padding():
    from lowbit.algorithms.early_exit import OffRamp

    torch.manual_seed(0)
    ramp = OffRamp(8, 3, dropout=0.0, pooling="mean").eval()
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = hidden.clone()
    padded[0, 3:] = 1e3  # whatever sits in padded positions must not matter
    want = ramp.classifier(torch.tanh(ramp.pooler(hidden[0, :3].mean(0))))
    torch.testing.assert_close(ramp(padded, mask)[0], want)
    torch.testing.assert_close(ramp(hidden, mask)[1], ramp(hidden[1:], None)[0])
    cls = OffRamp(8, 3, dropout=0.0).eval()
    cls.load_state_dict(ramp.state_dict())
    torch.testing.assert_close(cls(padded, mask), cls.classifier(torch.tanh(cls.pooler(padded[:, 0]))))


def test_each_validation_chooses_the_threshold_on_the_main_dev_set_without_a_callback():
    """An extra stage's trainer runs no method callbacks: the threshold must still follow every validation's
    main dev set (MNLI: matched), not the first one's, and never the mismatched set's."""
    from types import SimpleNamespace

    from lowbit.algorithms.early_exit.curve import candidate_thresholds, operating_points

    method = EntropyEarlyExit()
    from lowbit.algorithms.early_exit.offramp import ExitPolicy

    method.policy = ExitPolicy()
    task = SimpleNamespace(main_metric="acc", eval_splits=("validation_matched", "validation_mismatched"))
    torch.manual_seed(0)
    for scale in (0.5, 3.0, 8.0):  # three validations, each matched then mismatched
        matched = torch.randn(60, 3, 3) * scale
        labels = matched[:, -1].argmax(-1)
        method.eval_metrics({"logits": matched}, labels, task)
        method.eval_metrics({"logits": torch.randn(60, 3, 3)}, torch.randint(0, 3, (60,)), task)
        want = operating_points(threshold_curve(matched, labels, candidate_thresholds(matched)), (1.0,))[0].threshold
        assert method.policy.chosen() == pytest.approx(want)
        assert len(method.evals) == 2 and torch.equal(method.evals[0][0], matched)


def test_offramps_are_quantized_like_the_final_head(make_cfg):
    from lowbit.builder import build_model

    cfg = make_cfg([*TINY_RUN, "early_exit=entropy", "quantizer=uniform", "bit_assignment.bits=4",
                    "bit_assignment.exit_pooler=6"])
    built = build_model(cfg)
    ramp = built.model.lowbit_modules["exit_0"]
    assert ramp.pooler.quantizer is not None and ramp.pooler.quantizer.bits == 6
    assert getattr(ramp.classifier, "quantizer", None) is None  # classifiers stay float, as the final one
    assert built.model.bert.pooler.dense.quantizer.bits == 4
    cfg = make_cfg([*TINY_RUN, "early_exit=entropy", "quantizer=uniform", "bit_assignment.bits=4"])
    assert build_model(cfg).model.lowbit_modules["exit_0"].pooler.quantizer.bits == 4  # default: the pooler's


@pytest.mark.parametrize("extra", [
    ["quantizer=ternary_twn", "bit_assignment=w2e8", "distillation=kd_logits", "finetune.epochs=1"],
    ["pruning=magnitude", "pruning.final_sparsity=0.5", "pruning.final_warmup=0"],
], ids=["ternary+kd", "magnitude"])
def test_combinations_train_export_and_reload(extra, make_cfg, tmp_path):
    from lowbit.export.__main__ import export_checkpoint
    from lowbit.pipeline import train

    cfg = make_cfg([*RUN, *extra])
    result = train(cfg)
    assert result.metrics["early_exit/offramps_trained"] is True
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    facts = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "packed")
    assert facts["reload_max_abs_logit_diff"] == 0.0


@pytest.mark.parametrize("override, message", [
    ("early_exit.training=both", "early_exit.training must be one of"),
    ("early_exit.offramp_epochs=0", "early_exit.offramp_epochs must be > 0 with early_exit.training=two_stage"),
    ("early_exit.offramp_lr=-1", "early_exit.offramp_lr must be positive"),
    ("early_exit.threshold=-0.1", "early_exit.threshold must be >= 0"),
    ("early_exit.tolerances=[]", "early_exit.tolerances must be a non-empty list"),
    ("early_exit.curve_points=1", "early_exit.curve_points must be an integer >= 2"),
    ("early_exit.init=teacher", "early_exit.init must be one of"),
    ("early_exit.pooling=max", "early_exit.pooling must be one of"),
    ("data=stsb", "early_exit=entropy needs a classification task"),
    ("early_exit.scores_from=/nonexistent", "early_exit.scores_from='/nonexistent"),
])
def test_bad_input_is_one_line_before_training(override, message, make_cfg):
    from lowbit.pipeline import run

    extra = ["early_exit.threshold=0.1"] if "scores_from" in override else []
    cfg = make_cfg([*TINY_RUN, "early_exit=entropy", override, *extra])
    with pytest.raises(LowbitConfigError, match=message.replace("[", r"\[").replace(".", r"\.")) as err:
        run(cfg)
    assert "\n" not in str(err.value)


def test_wandb_run_gets_the_curve_table(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lowbit.pipeline import train

    cfg = make_cfg([*RUN, "logger=wandb"])
    train(cfg)
    runs = list(Path(cfg.paths.output_dir, "wandb").glob("offline-run-*"))
    record = next(runs[0].glob("*.wandb")).read_bytes()
    for key in (b"early_exit/curve", b"early_exit/score_vs_saving", b"expected_saving", b"early_exit/exit_predictor",
                b"early_exit/predictor_miss"):
        assert key in record, key
