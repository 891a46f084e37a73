"""The early-exit runner (deploy backend ``exit_runner``): samples leave the batch when they exit.

The encoder runs layer by layer on the model's own modules (every method's transforms, observers and
approximations stay in place). After layer i < L the off-ramp's entropy is computed for the samples
still running; those below the threshold take that off-ramp's prediction and leave, the rest continue
as a smaller batch — and, once samples have left, the key/query columns that are padding for every
remaining sample are dropped too. The official DeeBERT code exits only at batch size 1 (it raises an
exception out of the forward); here a sample's exit layer and prediction do not depend on the batch it
runs in (tested at batch 1 and 32).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from lowbit.algorithms.early_exit.curve import entropy
from lowbit.errors import check
from lowbit.registry import Registry
from lowbit.roles import find_targets

#: config.model_type -> f(model) -> (embeddings, encoder layers, head(hidden) -> logits)
FAMILIES: Registry[Callable[[nn.Module], tuple[nn.Module, list[nn.Module], Callable]]] = Registry(
    "exit runner model family (config.model_type)")


def _bert_parts(model: nn.Module):
    base = model.base_model

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.dropout(base.pooler(hidden)))

    return base.embeddings, list(base.encoder.layer), head


def _roberta_parts(model: nn.Module):
    base = model.base_model
    return base.embeddings, list(base.encoder.layer), model.classifier  # RobertaClassificationHead reads <s>


def _albert_parts(model: nn.Module):
    """ALBERT: embeddings projected to the hidden size; layer i runs the shared group int(i / (L / G))."""
    base, config = model.base_model, model.config
    encoder = base.encoder

    class Embed(nn.Module):
        def forward(self, **inputs):
            return encoder.embedding_hidden_mapping_in(base.embeddings(**inputs))

    per_group = config.num_hidden_layers / config.num_hidden_groups
    layers = [encoder.albert_layer_groups[int(i / per_group)] for i in range(config.num_hidden_layers)]

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.dropout(base.pooler_activation(base.pooler(hidden[:, 0]))))

    return Embed(), layers, head


FAMILIES.register("bert", _bert_parts)
FAMILIES.register("roberta", _roberta_parts)
FAMILIES.register("albert", _albert_parts)


def off_ramps(model: nn.Module) -> list[nn.Module]:
    """The model's off-ramps (role ``exit.<i>``) in layer order."""
    ramps = sorted((t for t in find_targets(model, "exit") if t.layer is not None), key=lambda t: t.layer)
    return [t.module for t in ramps]


class ExitRunner(nn.Module):
    """``runner(input_ids, attention_mask, token_type_ids) -> logits``; ``runner.exit_layers`` holds the
    0-based layer each sample of the last call left at (L−1: the final head).

    ``runner.clock``: when a list, each call appends ``time.perf_counter()`` after the embeddings and after each
    layer's exit decision (the last: after the final head) — the per-layer time the benchmark measures."""

    def __init__(self, model: nn.Module, threshold: float | None = None, trim_padding: bool = True):
        super().__init__()
        model_type = getattr(model.config, "model_type", type(model).__name__)
        check(model_type in FAMILIES, f"the exit runner supports {sorted(map(str, FAMILIES))} models, not {model_type!r}")
        self.model = model.eval()
        self.embeddings, self.layers, self.head = FAMILIES.get(model_type)(model)
        self.ramps = off_ramps(model)
        check(len(self.ramps) == len(self.layers) - 1,
              f"the exit runner needs an off-ramp after each of the first {len(self.layers) - 1} layers "
              f"(early_exit=entropy); the model has {len(self.ramps)}")
        if threshold is None:
            policies = [t.module for t in find_targets(model, "exit_policy")]
            threshold = policies[0].chosen() if policies else None
        check(threshold is not None, "the exit runner needs a threshold: early_exit.threshold, or a model whose "
                                     "evaluation chose one (early_exit.deploy_tolerance)")
        self.threshold = float(threshold)
        self.trim_padding = trim_padding
        self.exit_layers: torch.Tensor | None = None
        self.clock: list[float] | None = None

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = self._mask(hidden, attention_mask)
        self._tick()
        alive = torch.arange(batch, device=input_ids.device)
        exit_layers = torch.full((batch,), len(self.layers) - 1, dtype=torch.long, device=input_ids.device)
        out: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
                hidden = hidden[0]
            if i == len(self.layers) - 1:
                break
            logits = self.ramps[i](hidden, attention_mask)
            if out is None:
                out = logits.new_zeros(batch, logits.shape[-1])
            leave = entropy(logits) < self.threshold  # DeeBERT: strictly below
            if not bool(leave.any()):
                self._tick()
                continue
            out[alive[leave]] = logits[leave].to(out.dtype)
            exit_layers[alive[leave]] = i
            stay = ~leave
            if not bool(stay.any()):
                self.exit_layers = exit_layers
                self._tick()
                return out
            alive, hidden, attention_mask = alive[stay], hidden[stay], attention_mask[stay]
            if self.trim_padding:
                hidden, attention_mask = _trim_padding(hidden, attention_mask)
            mask = self._mask(hidden, attention_mask)
            self._tick()
        final = self.head(hidden)
        if out is None:
            out = final.new_zeros(batch, final.shape[-1])
        out[alive] = final.to(out.dtype)
        self.exit_layers = exit_layers
        self._tick()
        return out

    def _tick(self) -> None:
        if self.clock is not None:
            self.clock.append(time.perf_counter())


def _trim_padding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing sequence positions that are padding for every remaining sample (masked keys get
    exactly zero attention weight and the head reads the first token, so no output changes)."""
    used = attention_mask.bool().any(0)
    length = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if length == attention_mask.shape[1]:
        return hidden, attention_mask
    return hidden[:, :length], attention_mask[:, :length]
