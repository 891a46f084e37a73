"""Off-ramps (DeeBERT's "highways") and the exit policy a deployed model carries."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn


POOLINGS = ("cls", "mean")


class OffRamp(nn.Module):
    """An exit classifier on one encoder layer's output, the same shape as the model's own head:
    pooled vector -> ``pooler`` Linear (H -> H) -> tanh -> dropout -> ``classifier`` Linear (H -> C).

    DeeBERT's ``BertHighway`` is exactly a ``BertPooler`` plus dropout and a classifier; RoBERTa's head
    has the same two Linears (``dense``, ``out_proj``). ``child_roles`` gives the two Linears roles
    (``exit_pooler``, ``exit_classifier``), so a quantizer that plans bits by role quantizes the pooler
    like the final head's and leaves the classifier float, as it does the final classifier.

    ``pooling``: ``cls`` reads the first token (DeeBERT, BERT's head); ``mean`` averages the tokens the
    attention mask keeps — for backbones trained with mean pooling (sentence-transformers' MiniLM), whose
    first token carries almost no sentence information in the early layers.
    """

    child_roles: ClassVar[dict[str, str]] = {"pooler": "exit_pooler", "classifier": "exit_classifier"}

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "mean":
            if attention_mask is None:
                features = hidden_states.mean(1)
            else:
                keep = attention_mask[:, :hidden_states.shape[1], None].to(hidden_states.dtype)
                features = (hidden_states * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        else:
            features = hidden_states[:, 0]
        pooled = torch.tanh(self.pooler(features))
        return self.classifier(self.dropout(pooled))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling}"


class ExitPolicy(nn.Module):
    """The entropy threshold a deployed model exits with, as a buffer (NaN = not chosen yet), so a
    checkpoint or a packed export carries the threshold its evaluation chose."""

    def __init__(self):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float("nan"), dtype=torch.float64))

    def chosen(self) -> float | None:
        value = float(self.threshold)
        return None if math.isnan(value) else value

    def extra_repr(self) -> str:
        return f"threshold={self.chosen()}"
