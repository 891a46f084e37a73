"""Adaptive attention span (Sukhbaatar et al. 2019, as EdgeBERT uses it): a learnable span per head."""

from lowbit.algorithms.attention_span.adaptive import AdaptiveSpan, AdaptiveSpanMask, SpanCallback, span_mask
from lowbit.algorithms.attention_span.effect import spans_in_effect

__all__ = ["AdaptiveSpan", "AdaptiveSpanMask", "SpanCallback", "span_mask", "spans_in_effect"]
