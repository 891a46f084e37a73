"""Method cards: every option of every method config group, with its test settings.

Like composer's algorithm registry: the test-suite composes and trains each option
listed under ``conf/<group>/`` on the tiny model, and fails loudly when an option has
no card here. A card names the paper it reproduces and the overrides that make a
1-step run meaningful on the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.registry import Registry

METHOD_GROUPS = ("quantizer", "bit_assignment", "approximation", "pruning", "early_exit", "distillation")


@dataclass(frozen=True)
class MethodCard:
    group: str
    option: str
    summary: str
    paper: str = ""
    #: Hydra overrides applied on top of ``model=tiny`` for the smoke run
    test_overrides: tuple[str, ...] = ()


METHOD_CARDS: Registry[MethodCard] = Registry("method option (group/option)")


def card(group: str, option: str, summary: str, paper: str = "", test_overrides: tuple[str, ...] = ()) -> None:
    METHOD_CARDS.register(f"{group}/{option}", MethodCard(group, option, summary, paper, test_overrides))


for _group in ("approximation", "pruning", "early_exit", "distillation"):
    card(_group, "none", f"no {_group}")
card("quantizer", "none", "full precision")
card("quantizer", "uniform", "k-bit uniform weights (per-tensor/row/group), 8-bit activations", "Q-BERT",
     ("bit_assignment.bits=4", "quantizer.granularity=group", "quantizer.n_groups=4"))
card("quantizer", "ternary_twn", "ternary weights (TWN), 8-bit activations", "TernaryBERT",
     ("bit_assignment.bits=2", "bit_assignment.word_embedding_bits=2"))
card("bit_assignment", "uniform", "one bit-width for all Linear weights", "Q-BERT DirectQ",
     ("quantizer=uniform", "bit_assignment.bits=3"))
card("bit_assignment", "per_module", "bits per module type", "Q-BERT Table 3",
     ("quantizer=uniform", "bit_assignment.attention=4", "bit_assignment.ffn=2"))
card("distillation", "ternarybert", "logits soft-CE + hidden-state MSE + attention-score MSE from a frozen teacher",
     "TernaryBERT", ("finetune.epochs=1", "quantizer=ternary_twn", "bit_assignment.bits=2"))
card("distillation", "kd_logits", "KL on logits at T=2 (x0.9) + hard labels (x0.1)", "EdgeBERT / Hinton KD",
     ("finetune.epochs=1", "quantizer=ternary_twn", "bit_assignment.bits=2"))
card("quantizer", "ternary_lat", "loss-aware ternary weights (Adam second moment as curvature)", "TernaryBERT",
     ("bit_assignment.bits=2", "bit_assignment.word_embedding_bits=2", "trainer.fast_dev_run=2"))
for _wea in ("w2e2", "w2e8", "w8e8"):
    card("bit_assignment", _wea, f"TernaryBERT {_wea[1]}-{_wea[3]}-8 weight/embedding bits", "TernaryBERT",
         ("quantizer=ternary_twn",))
card("quantizer", "groupwise", "k-bit min/max weights, head-aligned group ranges (W_o: head input columns)", "Q-BERT",
     ("bit_assignment.bits=4", "quantizer.groups_per_head=2"))
card("bit_assignment", "hessian", "bits per layer ranked by Hessian sensitivity under a budget", "Q-BERT-MP",
     ("quantizer=groupwise", "bit_assignment.sensitivities=[2.0,1.0]", "bit_assignment.budget=2.5"))
card("bit_assignment", "per_layer", "bits per encoder layer (sweepable), optional size constraint", "Q-BERT-MP search",
     ("quantizer=groupwise", "bit_assignment.layer_bits=[4,2]", "bit_assignment.max_average_bits=4"))
