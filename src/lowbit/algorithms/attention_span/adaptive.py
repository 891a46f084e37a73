"""``attention_span=adaptive``: a learnable attention span per head (Sukhbaatar et al., 2019; EdgeBERT).

Each head h of each self-attention learns z_h = ``span_fraction``_h · ``max_span`` tokens. The
softmax output is multiplied by the soft mask m(x) = clamp((R + z_h − x) / R, 0, 1) of the distance
x = |i − j| between query i and key j (both directions: BERT is bidirectional) and every row is
renormalised to sum to 1, so a head sees keys up to z_h tokens away fully, then fades over the ramp
R, and never sees keys z_h + R or more away. The span loss ``loss_coeff · max_span · mean_h(fraction)``
per layer, summed over layers (the official ``AdaptiveSpan.get_loss``), pulls the spans down; the
task loss pulls up the spans that help. In evaluation keys farther than the layer's largest span plus
the ramp are never multiplied (``lowbit.attention.banded_attention``).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from lowbit.errors import LowbitConfigError, check
from lowbit.methods import Method, ParamGroup

#: deploy backends that run attention with their own kernels, where the span mask does not exist
NO_SPAN_BACKENDS = {"int8_cpu": "its integer attention has no span mask"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def span_mask(distance: torch.Tensor, span: torch.Tensor, ramp: float) -> torch.Tensor:
    """m(x) = clamp((R + z − x) / R, 0, 1) for distances ``distance`` and spans ``span`` (broadcast)."""
    return ((ramp + span - distance) / ramp).clamp(0.0, 1.0)


class AdaptiveSpanMask(nn.Module):
    """The span mask of one self-attention, in its ``probs`` slot: one learnable span per head.

    ``span_fraction`` ([heads, 1, 1], a registered parameter: optimised, checkpointed, exported)
    is z / ``max_span``; it has no batch dimension, so the same mask applies at every batch size
    (EdgeBERT's copy shapes it [train batch, heads, 1, 1] and skips the mask at any other batch
    size). ``chain_order`` 40: before an 8-bit softmax-output quantizer (60), which then sees
    the masked, renormalised probabilities.

    ``forward(probs, distance=None)``: ``probs`` [batch, heads, *, q, k]; ``distance`` the |i − j| of
    the last two dims (None: positions 0 … q − 1 and 0 … k − 1, the plain [L, L] layout).
    """

    chain_order = 40

    def __init__(self, num_heads: int, max_span: int, ramp: float, init: float, trim: bool = True):
        super().__init__()
        self.num_heads, self.max_span, self.ramp, self.trim = num_heads, max_span, float(ramp), trim
        self.span_fraction = nn.Parameter(torch.full((num_heads, 1, 1), float(init)))

    def fractions(self) -> torch.Tensor:
        """The fractions the mask uses: clamped to [0, 1].

        The callback clamps the parameter after every optimizer step (as the official code); the mask
        clamps again so that training loops without the callback (an extra stage, a user's loop) and
        the trimming window (computed from these same values) never see a span outside [0, max_span].
        """
        return self.span_fraction.clamp(0.0, 1.0)

    def spans(self) -> torch.Tensor:
        """Span per head in tokens, z = fraction · max_span ([heads])."""
        return self.fractions().reshape(-1) * self.max_span

    def mask(self, distance: torch.Tensor) -> torch.Tensor:
        """m per head at ``distance``: [heads, *distance.shape]."""
        z = (self.fractions() * self.max_span).reshape(-1, *([1] * distance.dim()))
        return span_mask(distance.to(z.dtype), z, self.ramp)

    def log_weights(self, distance: torch.Tensor) -> torch.Tensor:
        """log m per head at ``distance`` ([heads, *distance.shape]), −inf where m = 0.

        The mask folded into the softmax: softmax(s + log m) = p·m / Σ p·m, ``forward``'s distribution,
        computed without dividing by Σ p·m. That sum is tiny when a short span keeps only keys the softmax
        gave ~1e-40 (trained attention puts its weight far away, on [CLS]/[SEP]); its 1/(Σ p·m)² gradient
        then overflows to inf and the next step is NaN (seen at MNLI step 94 with spans of ~0-20 tokens).
        The attention takes this path whenever the mask is the first ``probs`` transform after the float
        softmax (``lowbit.attention``); ``forward`` stays for probabilities from an integer softmax
        (multiples of 2^-8: the sum is 0 or >= 2^-8).
        """
        m = self.mask(distance)
        # where(): no gradient reaches log(0) (0 · inf would be NaN)
        return torch.where(m > 0, m.clamp_min(torch.finfo(m.dtype).tiny).log(), float("-inf"))

    def forward(self, probs: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        check(probs.size(1) == self.num_heads,
              f"attention_span: probabilities have {probs.size(1)} heads, the span mask has {self.num_heads}")
        if distance is None:
            q = torch.arange(probs.size(-2), device=probs.device)
            k = torch.arange(probs.size(-1), device=probs.device)
            distance = (q[:, None] - k[None, :]).abs()
        m = self.mask(distance)
        m = m.reshape(self.num_heads, *([1] * (probs.dim() - 2 - distance.dim())), *distance.shape).to(probs.dtype)
        masked = probs * m
        # rows sum to 1 again (the official code divides by sum + 1e-8); dividing by the sum itself makes
        # the result independent of the softmax's normaliser, which is what lets evaluation compute the
        # softmax over the key window only. A row with nothing left (never a real query: m(0) = 1) stays 0.
        total = masked.sum(-1, keepdim=True)
        return masked / torch.where(total > 0, total, torch.ones_like(total))

    @torch.no_grad()
    def attention_window(self) -> int | None:
        """The largest distance that can get weight, W = ⌈max_h z_h + R⌉ − 1 (m(x) > 0 iff x < z + R).

        None when trimming is off. Evaluation then computes attention over |i − j| <= W only.
        """
        if not self.trim:
            return None
        return self.window()

    @torch.no_grad()
    def window(self) -> int:
        """W = ⌈max_h z_h + R⌉ − 1, computed in the mask's own dtype and order of operations (R + z), so the
        trimmed keys are exactly those the mask gives 0."""
        reach = float(self.ramp + (self.fractions() * self.max_span).max())
        return max(0, math.ceil(reach) - 1)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.span_fraction.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, max_span={self.max_span}, ramp={self.ramp:g}, trim={self.trim}"


class AdaptiveSpan(Method):
    """A learnable attention span per head in every self-attention (EdgeBERT's defaults).

    ``max_span``: the longest span (tokens) a head can learn; ``ramp``: R, the length of the mask's
    soft edge; ``init``: the initial fraction of ``max_span`` (0.002 · 512 ≈ 1 token plus the ramp);
    ``loss_coeff``: weight of the span loss; ``lr``: own learning rate of the span parameters
    (None: the optimizer's); ``trim_at_inference``: evaluation computes attention only within the
    largest span plus the ramp (exact; False: the full [L, L] attention, masked).

    The defaults (512, 256, 0.002, 5e-6) are EdgeBERT's, which it ran at 128 tokens. There a ramp of
    256 never cuts a key off: m(x) > 0 for every x < z + R, and x <= 127 < 256 <= z + R whatever the
    spans learn (at init m(127) = (256 + 1.02 − 127) / 256 ≈ 0.51), so the mask only down-weights far
    keys and trimming saves nothing (W >= 256). For runs at 64–128 tokens choose ``max_span`` =
    ``data.max_length`` and a ramp well below it: ``attention_span=adaptive_seq`` (experiment
    ``edgebert_span_sst2``).
    """

    def __init__(self, max_span: int = 512, ramp: float = 256, init: float = 0.002, loss_coeff: float = 5e-6,
                 lr: float | None = None, trim_at_inference: bool = True):
        check(isinstance(max_span, int) and not isinstance(max_span, bool) and max_span >= 1,
              f"attention_span.max_span must be an integer >= 1 (tokens), got {max_span!r}")
        check(_number(ramp) and 0 < ramp <= max_span,
              f"attention_span.ramp must be in (0, attention_span.max_span={max_span}] (tokens), got {ramp!r}")
        check(_number(init) and 0 < init <= 1,
              f"attention_span.init must be in (0, 1] (a fraction of max_span), got {init!r}")
        check(_number(loss_coeff) and loss_coeff >= 0, f"attention_span.loss_coeff must be >= 0, got {loss_coeff!r}")
        check(lr is None or (_number(lr) and lr > 0),
              f"attention_span.lr must be null (the optimizer's) or > 0, got {lr!r}")
        check(isinstance(trim_at_inference, bool),
              f"attention_span.trim_at_inference must be true or false, got {trim_at_inference!r}")
        self.max_span, self.ramp, self.init = max_span, float(ramp), float(init)
        self.loss_coeff, self.lr, self.trim_at_inference = float(loss_coeff), lr, trim_at_inference
        #: one mask per self-attention module, in layer order (ALBERT: one, shared by every layer)
        self.masks: list[AdaptiveSpanMask] = []

    # -- surgery -----------------------------------------------------------------------------
    def prepare(self, model: nn.Module, edit) -> None:
        found = edit.self_attention()
        check(bool(found), f"{self.label}: the model has no self-attention modules (role self_attention) to mask")
        self.masks = []
        for target, _ in found:
            heads = getattr(target.module, "num_attention_heads", None) or model.config.num_attention_heads
            device = next(target.module.parameters()).device
            mask = AdaptiveSpanMask(int(heads), self.max_span, self.ramp, self.init, self.trim_at_inference).to(device)
            edit.add_attention_transform(target, "probs", mask)
            self.masks.append(mask)

    def span_parameters(self) -> list[nn.Parameter]:
        return [m.span_fraction for m in self.masks]

    # -- training ----------------------------------------------------------------------------
    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        # no weight decay: decay would be a second, unconfigured span penalty
        return [ParamGroup(self.span_parameters(), "attention_span", lr=self.lr, weight_decay=0.0)] if self.masks else []

    def span_loss(self) -> torch.Tensor:
        """Σ over layers of ``loss_coeff · max_span · mean_h(fraction_h)`` (the official ``get_loss``, summed
        over layers as its trainer does), on the parameter itself: it keeps pulling a span at 0 down, the
        clamp holds it there."""
        return sum(self.loss_coeff * self.max_span * m.span_fraction.mean() for m in self.masks)

    def loss_terms(self) -> list:
        if self.loss_coeff == 0:
            return []
        return [lambda outputs, batch, step: {"span": self.span_loss()}]

    def callbacks(self) -> list:
        return [SpanCallback(self)]

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        if backend in NO_SPAN_BACKENDS:
            raise LowbitConfigError(f"deploy backend {backend} cannot run {self.label}: {NO_SPAN_BACKENDS[backend]}")
        return model

    # -- reporting ---------------------------------------------------------------------------
    @torch.no_grad()
    def mean_span(self) -> float:
        return float(torch.cat([m.spans() for m in self.masks]).mean()) if self.masks else 0.0

    @torch.no_grad()
    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_span": self.max_span, "ramp": self.ramp}
        if not self.masks:
            return out  # never prepared
        out["mean_span"] = self.mean_span()
        # the farthest key any query can still weigh (W of the trimming window), whether trimming is on or not
        out["max_window"] = max(m.window() for m in self.masks)
        for i, m in enumerate(self.masks):
            spans = m.spans()
            out[f"span/layer_{i}"] = float(spans.mean())
            for h, z in enumerate(spans.tolist()):
                out[f"span/layer_{i}/head_{h}"] = z
        return out


class SpanCallback(pl.Callback):
    """After every training batch (its optimizer step): clamp the span fractions to [0, 1] (as the official
    code after each update) and log ``attention_span/mean_span`` (tokens) for the W&B curve."""

    def __init__(self, method: AdaptiveSpan):
        self.method = method

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for m in self.method.masks:
            m.clamp_()
        pl_module.log("attention_span/mean_span", self.method.mean_span(), on_step=True, on_epoch=False, batch_size=1)
