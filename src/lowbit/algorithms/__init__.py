"""Method cards: every option of every method config group, with its test settings and its effect.

Like composer's algorithm registry: the test-suite composes and trains each option listed under
``conf/<group>/`` on the tiny model and fails loudly when an option has no card here, or a card
has no effect. A card names the paper it reproduces, the overrides that make a short run on the
tiny model meaningful, and the effect (``lowbit.algorithms.effects``) that proves the option did
something: an option that does nothing fails the suite.

``test_overrides`` may set other groups (a quantizer, so bits can show); the pairwise test drops
those when it chooses that group's option itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.algorithms import effects as E
from lowbit.algorithms.adaptivfloat.effect import adaptivfloat_weights as _adaptivfloat_weights
from lowbit.algorithms.early_exit.effect import mean_pooled_offramps_trained, offramps_trained
from lowbit.algorithms.ibert.effect import ibert_quantized, integer_ops
from lowbit.algorithms.pruning import movement_sparsity_reached, soft_movement_in_effect, sparsity_reached
from lowbit.registry import Registry

METHOD_GROUPS = ("quantizer", "bit_assignment", "approximation", "pruning", "attention_span", "early_exit",
                 "distillation")


@dataclass(frozen=True)
class MethodCard:
    group: str
    option: str
    summary: str
    effect: E.Effect
    paper: str = ""
    #: Hydra overrides applied on top of ``model=tiny`` for the smoke run
    test_overrides: tuple[str, ...] = ()


METHOD_CARDS: Registry[MethodCard] = Registry("method option (group/option)")


def card(group: str, option: str, summary: str, effect: E.Effect, paper: str = "",
         test_overrides: tuple[str, ...] = ()) -> None:
    METHOD_CARDS.register(f"{group}/{option}", MethodCard(group, option, summary, effect, paper, test_overrides))


for _group in METHOD_GROUPS:
    card(_group, "none", f"no {_group}" if _group != "quantizer" else "full precision", E.nothing_from(_group))
card("quantizer", "uniform", "k-bit uniform weights (per-tensor/row/group), 8-bit activations", E.weights_on_grid(),
     "Q-BERT", ("bit_assignment.bits=4", "quantizer.granularity=group", "quantizer.n_groups=4"))
card("quantizer", "ternary_twn", "ternary weights (TWN), 8-bit activations", E.ternary_weights(), "TernaryBERT",
     ("bit_assignment.bits=2", "bit_assignment.word_embedding=2"))
card("quantizer", "ternary_lat", "loss-aware ternary weights (Adam second moment as curvature)",
     E.ternary_weights(require_curvature=True), "TernaryBERT",
     ("bit_assignment.bits=2", "bit_assignment.word_embedding=2", "trainer.fast_dev_run=2"))
card("quantizer", "groupwise", "k-bit min/max weights, head-aligned group ranges (W_o: head input columns)",
     E.weights_on_grid(lambda name, layer: 8 if ".attention." in name else None), "Q-BERT",
     ("bit_assignment.bits=4", "quantizer.groups_per_head=2"))
card("quantizer", "adaptivfloat", "n-bit AdaptivFloat weights (sign, exp_bits exponent, mantissa; per-tensor bias)",
     _adaptivfloat_weights, "AdaptivFloat (Tambe et al. 2020); EdgeBERT",
     ("bit_assignment.bits=6", "quantizer.exp_bits=2",
      "quantizer.activation={format:adaptivfloat,bits:8,exp_bits:3,sites:[linear_input]}"))
card("bit_assignment", "uniform", "one bit-width for all Linear weights", E.bits_as_planned({"bits": 3}),
     "Q-BERT DirectQ", ("quantizer=uniform", "bit_assignment.bits=3"))
card("bit_assignment", "per_module", "bits per module type", E.bits_as_planned({"attention": 4, "ffn": 2}),
     "Q-BERT Table 3", ("quantizer=uniform", "bit_assignment.attention=4", "bit_assignment.ffn=2"))
for _wea in ("w2e2", "w2e8", "w8e8"):
    card("bit_assignment", _wea, f"TernaryBERT {_wea[1]}-{_wea[3]}-8 weight/embedding bits",
         E.bits_as_planned({"bits": int(_wea[1]), "word_embedding": int(_wea[3])}), "TernaryBERT",
         ("quantizer=ternary_twn",))
card("bit_assignment", "hessian", "bits per layer ranked by Hessian sensitivity under a budget",
     E.bits_as_planned({"layer_bits": "3,2"}), "Q-BERT-MP",
     ("quantizer=groupwise", "bit_assignment.sensitivities=[2.0,1.0]", "bit_assignment.budget=2.5"))
card("bit_assignment", "per_layer", "bits per encoder layer (sweepable), optional size constraint",
     E.bits_as_planned({"layer_bits": "4,2"}), "Q-BERT-MP search",
     ("quantizer=groupwise", "bit_assignment.layer_bits=[4,2]", "bit_assignment.max_average_bits=4"))
card("distillation", "ternarybert", "logits soft-CE + hidden-state MSE + attention-score MSE from a frozen teacher",
     E.loss_terms_logged("logits", "hidden", "attn"), "TernaryBERT",
     ("finetune.epochs=1", "quantizer=ternary_twn", "bit_assignment.bits=2"))
card("distillation", "kd_logits", "KL on logits at T=2 (x0.9) + hard labels (x0.1)", E.loss_terms_logged("logits", "task"),
     "EdgeBERT / Hinton KD", ("finetune.epochs=1", "quantizer=ternary_twn", "bit_assignment.bits=2"))
card("pruning", "magnitude", "unstructured magnitude pruning, cubic or one-shot schedule, optional word embeddings",
     sparsity_reached,
     "Zhu & Gupta 2017; Sanh et al. 2020; EdgeBERT",
     ("pruning.final_sparsity=0.5", "pruning.final_warmup=0", "pruning.embedding_sparsity=0.6"))
card("pruning", "edgebert", "EdgeBERT's pruning: encoder magnitude 50% (cubic), word embeddings 60% by magnitude",
     sparsity_reached, "EdgeBERT", ("pruning.final_warmup=0",))
card("pruning", "movement", "movement pruning: learned scores, straight-through top-k, cubic schedule, masks baked",
     movement_sparsity_reached, "Sanh et al. 2020 (MvP); EdgeBERT",
     ("pruning.final_sparsity=0.5", "pruning.initial_warmup=0", "pruning.final_warmup=0",
      "pruning.embedding_sparsity=0.6"))
# 2 steps: the masks of step 1 come from scores one Adam step (±score_lr) away from 0, past logit(0.1) = -2.2
card("pruning", "soft_movement", "soft movement pruning: sigmoid-threshold mask + L1 penalty on sigmoid(scores)",
     soft_movement_in_effect, "Sanh et al. 2020 (soft MvP)",
     ("trainer.fast_dev_run=2", "pruning.initial_warmup=0", "pruning.final_warmup=0", "pruning.score_lr=5"))
card("quantizer", "ibert", "I-BERT: symmetric per-channel 8-bit weights, int32 biases, static 8-bit activations, 2^-8 softmax",
     ibert_quantized, "I-BERT", ("bit_assignment.bits=8",))
card("approximation", "ibert", "integer-only i-GELU, i-softmax, i-LayerNorm (integer Newton isqrt)", integer_ops, "I-BERT")
card("approximation", "hgelu", "h-GELU x·ReLU6(1.702x+3)/6 as the GELU (I-BERT's integer baseline)", integer_ops,
     "I-BERT Table 1/4")
card("approximation", "sigmoid_gelu", "x·σ(1.702x) as the GELU (I-BERT Table 1)", integer_ops, "I-BERT Table 1")
card("early_exit", "entropy", "DeeBERT off-ramps after every layer, entropy exit, one-pass threshold curves",
     offramps_trained, "DeeBERT; EdgeBERT", ("early_exit.offramp_epochs=1",))
card("early_exit", "entropy_mean", "entropy early exit with mean-pooled off-ramps (mean-pooled backbones: MiniLM)",
     mean_pooled_offramps_trained, "DeeBERT; EdgeBERT", ("early_exit.offramp_epochs=1",))
from lowbit.algorithms.attention_span import spans_in_effect as _spans_in_effect

card("attention_span", "adaptive", "learnable attention span per head (soft distance mask, span loss), trimmed eval",
     _spans_in_effect, "Sukhbaatar et al. 2019; EdgeBERT",
     ("attention_span.max_span=16", "attention_span.ramp=4", "attention_span.init=0.25", "attention_span.lr=0.01"))
card("attention_span", "adaptive_seq", "adaptive span sized for the sequence (max_span = data.max_length, ramp 16, LR 1e-2)",
     _spans_in_effect, "Sukhbaatar et al. 2019; EdgeBERT", ("attention_span.ramp=4", "attention_span.init=0.05"))
