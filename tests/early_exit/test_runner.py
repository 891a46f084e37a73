"""The exit runner: same exits and predictions at batch 1 and 32, and as the one-pass cached curve."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForSequenceClassification

from lowbit.algorithms.early_exit import EntropyEarlyExit
from lowbit.algorithms.early_exit.curve import candidate_thresholds, entropy, exit_layers
from lowbit.algorithms.early_exit.runner import ExitRunner
from lowbit.builder import prepare_model
from lowbit.deploy import deploy
from lowbit.errors import LowbitConfigError


def exit_model(model_type: str = "bert", layers: int = 4, seed: int = 0, pooling: str = "cls"):
    torch.manual_seed(seed)
    config = tiny_config(model_type)
    config.num_hidden_layers = layers
    model = AutoModelForSequenceClassification.from_config(config)
    method = EntropyEarlyExit(pooling=pooling)
    method.group, method.option = "early_exit", "entropy"
    prepare_model(model, {"early_exit": method})
    with torch.no_grad():  # spread the random off-ramps' entropies so exits happen at every layer
        for ramp in method.ramps:
            ramp.classifier.weight.mul_(40)
    return model.eval(), method


def batch_of(n: int, seed: int = 5, vocab: int = 120, length: int = 20):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def cached(model, method, inputs):
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return method.eval_outputs(out, inputs)["logits"]


@pytest.mark.parametrize("model_type, pooling", [("bert", "cls"), ("roberta", "cls"), ("albert", "cls"),
                                                  ("bert", "mean")])
def test_batch_1_and_32_exit_alike_and_match_the_cached_curve(model_type, pooling):
    model, method = exit_model(model_type, pooling=pooling)
    inputs = batch_of(32)
    if model_type == "roberta":
        inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 1)
    logits = cached(model, method, inputs)
    cands = candidate_thresholds(logits)
    # a threshold where some samples leave at each off-ramp and some run to the end
    layers_at = exit_layers(entropy(logits[:, :-1]), cands)
    spread = [(len(torch.unique(layers_at[:, k])), k) for k in range(len(cands))]
    threshold = float(cands[max(spread)[1]])
    expected_layers = exit_layers(entropy(logits[:, :-1]), torch.tensor([threshold]))[:, 0]
    used = set(torch.unique(expected_layers).tolist())
    assert len(used) >= 3 and 3 in used and 0 in used, f"the test needs early, middle and final exits, got {used}"
    expected_preds = logits[torch.arange(32), expected_layers].argmax(-1)

    runner = ExitRunner(model, threshold)
    out32 = runner(**inputs)
    layers32 = runner.exit_layers.clone()
    assert torch.equal(layers32, expected_layers)
    assert torch.equal(out32.argmax(-1), expected_preds)
    torch.testing.assert_close(out32, logits[torch.arange(32), expected_layers], atol=1e-5, rtol=1e-5)
    for i in range(32):
        length = int(inputs["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :length] for k, v in inputs.items()}  # alone and unpadded
        out1 = runner(**one)
        assert int(runner.exit_layers[0]) == int(layers32[i])
        assert int(out1.argmax(-1)) == int(expected_preds[i])
        torch.testing.assert_close(out1[0], out32[i], atol=1e-5, rtol=1e-5)


def test_threshold_zero_is_the_full_model_and_a_large_one_exits_at_the_first_ramp():
    model, method = exit_model()
    inputs = batch_of(8)
    with torch.no_grad():
        full = model(**inputs).logits
    runner = ExitRunner(model, 0.0)
    torch.testing.assert_close(runner(**inputs), full, atol=1e-5, rtol=1e-5)
    assert (runner.exit_layers == 3).all()
    runner = ExitRunner(model, 10.0)
    torch.testing.assert_close(runner(**inputs), cached(model, method, inputs)[:, 0], atol=1e-5, rtol=1e-5)
    assert (runner.exit_layers == 0).all()


def test_deploy_backend_uses_the_threshold_the_model_carries_and_int8_refuses():
    model, method = exit_model()
    with pytest.raises(LowbitConfigError, match="needs a threshold"):
        deploy(model, {"early_exit": method}, "exit_runner")
    method.policy.threshold.fill_(0.25)
    runner = deploy(model, {"early_exit": method}, "exit_runner")
    assert isinstance(runner, ExitRunner) and runner.threshold == 0.25
    with pytest.raises(LowbitConfigError, match="early_exit=entropy does not run on the int8_cpu engine"):
        deploy(model, {"early_exit": method}, "int8_cpu")
    plain = AutoModelForSequenceClassification.from_config(tiny_config())
    with pytest.raises(LowbitConfigError, match="backend exit_runner needs early_exit=entropy"):
        deploy(plain, {}, "exit_runner")


def test_albert_shares_its_layer_across_depth_and_matches_the_full_model():
    model, _ = exit_model("albert")
    assert model.config.num_hidden_groups == 1
    inputs = batch_of(6)
    with torch.no_grad():
        full = model(**inputs).logits
    torch.testing.assert_close(ExitRunner(model, 0.0)(**inputs), full, atol=1e-5, rtol=1e-5)
