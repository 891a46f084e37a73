"""The exit-layer predictor in runs: training-set entropies kept once the weights are final, summary, bad options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN

from lowbit.errors import LowbitConfigError

#: 3 layers (2 off-ramps), so the table has a later layer to predict
RUN = ["model=tiny", "model.config.num_hidden_layers=3", "logger=csv", "callbacks=default", "trainer.max_epochs=1",
       "data.max_train_samples=32", "data.max_eval_samples=32", "data.batch_size=8", "trainer.accelerator=cpu",
       "trainer.enable_progress_bar=false", "early_exit=entropy", "early_exit.offramp_epochs=1",
       "early_exit.predictor.max_train_samples=20", "early_exit.predictor.bins=4"]


@torch.no_grad()
def entropies_by_definition(model, method, rows) -> torch.Tensor:
    """-Σ p log p of every off-ramp's softmax, one unpadded sentence at a time."""
    model.eval()
    out = []
    for row in rows:
        inputs = {k: torch.tensor(row[k]).unsqueeze(0) for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in row}
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        p = torch.stack([torch.softmax(x.double(), -1) for x in method.ramp_logits(hidden, inputs["attention_mask"])],
                        dim=1)[0]
        out.append(-(p * p.log()).sum(-1))
    return torch.stack(out)


@pytest.mark.parametrize("training", ["two_stage", "joint"])
def test_training_entropies_are_the_final_weights_on_a_capped_subset(training, make_cfg):
    from lowbit.pipeline import train

    cfg = make_cfg([*RUN, f"early_exit.training={training}"])
    result = train(cfg)
    job, m = result.job, result.metrics
    method = job.methods["early_exit"]
    record = torch.load(Path(cfg.paths.output_dir) / "early_exit" / "exit_predictor.pt", weights_only=True)
    rows = record["train_rows"].tolist()
    assert len(rows) == 20 == len(set(rows)) and rows == sorted(rows) and 0 <= rows[0] and rows[-1] < 32
    assert record["train_entropies"].shape == (20, 2) and record["bins"] == 4 and record["table"] == "entropy"
    # of the final weights: after the off-ramp stage with two_stage (its off-ramps moved: a stale pass would differ)
    train_split = job.datamodule.splits[job.datamodule.task.train_split]
    want = entropies_by_definition(job.model, method, [train_split[i] for i in rows])
    torch.testing.assert_close(record["train_entropies"].double(), want, atol=1e-5, rtol=1e-4)
    assert record["threshold"] == pytest.approx(m["early_exit/threshold"])
    # the summary: the dev set's 32 sentences, at the deployed threshold
    misses = {int(k): v for k, v in m["early_exit/predictor/miss_counts"].items()}
    assert sum(misses.values()) == 32 == m["early_exit/predictor/sentences"]
    assert m["early_exit/predictor/exact"] == pytest.approx(misses.get(0, 0) / 32)
    assert m["early_exit/predictor/within_1"] == pytest.approx(sum(v for k, v in misses.items() if abs(k) <= 1) / 32)
    assert m["early_exit/predictor/train_sentences"] == 20
    assert m["early_exit/predictor/score_at_threshold"] == pytest.approx(m["early_exit/score"])


def test_predictor_null_keeps_nothing(make_cfg):
    from lowbit.pipeline import train

    cfg = make_cfg([*RUN[:-2], "early_exit.predictor=null"])
    m = train(cfg).metrics
    assert not (Path(cfg.paths.output_dir) / "early_exit" / "exit_predictor.pt").exists()
    assert not any(k.startswith("early_exit/predictor/") for k in m)


@pytest.mark.parametrize("override, message", [
    ("early_exit.predictor.bins=0", "early_exit.predictor.bins must be an integer >= 1, got 0"),
    ("early_exit.predictor.bins=2.5", "early_exit.predictor.bins must be an integer >= 1"),
    ("early_exit.predictor.max_train_samples=0", "early_exit.predictor.max_train_samples must be a positive integer"),
    ("early_exit.predictor.table=median", "early_exit.predictor.table must be one of ('entropy', 'exit_layer')"),
    ("+early_exit.predictor.layer=1", "early_exit.predictor must be null or a mapping with keys"),
    ("early_exit.latency_target_ms=[5,-1]", "early_exit.latency_target_ms must be a list of positive numbers"),
    ("early_exit.latency_target_ms=5", "early_exit.latency_target_ms must be a list of positive numbers"),
])
def test_bad_predictor_options_are_one_line_before_training(override, message, make_cfg):
    from lowbit.pipeline import run

    cfg = make_cfg([*TINY_RUN, "early_exit=entropy", override])
    with pytest.raises(LowbitConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) \
            as err:
        run(cfg)
    assert "\n" not in str(err.value)
