"""The authors' AdaptivFloat quantizer, transcribed for testing only.

Source: github.com/ttambe/AdaptivFloat, file ``adaptivfloat.py``, function ``quantize_adaptivfloat``, commit
e107ec4293c720090cc8e68b9e195c7f074a7299 (T. Tambe et al., "AdaptivFloat", arXiv 1909.13271 / DAC 2020).
That repository has no license file, so it is not vendored: this is a transcription of only the steps the
tests need, in the same operations and order (so its float32 results are bit-identical to the original's),
without the original's comments. Differences from lowbit's format are listed in
``src/lowbit/algorithms/adaptivfloat/README.md`` and tested in ``test_reference.py``.
"""

from __future__ import annotations

import torch


def quantize_adaptivfloat(float_arr: torch.Tensor, n_bits: int = 8, n_exp: int = 4, bias=None) -> torch.Tensor:
    n_mant = n_bits - 1 - n_exp
    sign = torch.sign(float_arr)
    float_arr = torch.abs(float_arr)
    if bias is None:
        bias_temp = torch.frexp(float_arr.max())[1] - 1
        bias = (2 ** (n_exp - 1) - 1) - bias_temp
    min_exp = -2 ** (n_exp - 1) + 2 - bias
    max_exp = 2 ** (n_exp - 1) - 1 - bias
    min_value = 2.0**min_exp
    max_value = (2.0**max_exp) * (2 - 2 ** (-n_mant))
    float_arr[float_arr < min_value] = 0
    float_arr[float_arr > max_value] = max_value
    mant, exp = torch.frexp(float_arr)
    mant = 2 * mant
    exp = exp - 1
    power_exp = torch.exp2(exp)
    scale = 2 ** (-n_mant)
    mant = ((mant / scale).round()) * scale
    return sign * power_exp * mant


def reference_bias(float_arr: torch.Tensor, n_exp: int) -> int:
    """The reference's default ``bias`` for a tensor (its sign convention: max_exp = 2^(n_exp-1) - 1 - bias)."""
    return int((2 ** (n_exp - 1) - 1) - (torch.frexp(float_arr.abs().max())[1] - 1))
