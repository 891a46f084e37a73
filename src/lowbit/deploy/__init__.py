"""Deploy backends: what a trained fake-quant model becomes when it runs for real.

``deploy(model, methods, backend)`` calls every method's ``convert(model, backend)`` in
``METHOD_ORDER`` (a method that cannot run on the backend refuses there in one line), then the
backend's own converter. ``fake`` is the float simulation the model trains with (the identity for
every method so far; distillation drops its teacher). ``int8_cpu`` is I-BERT's integer-only encoder
(``lowbit.deploy.int8_cpu``): int8 weights, int32 accumulators, dyadic requantization, integer
GELU/softmax/LayerNorm; ``forward`` is its reference executor (exact integers in torch). ``int8_ort`` runs the
same program with ONNX Runtime's integer kernels (``lowbit.deploy.int8_ort``). ``exit_runner`` is DeeBERT's early exit at any batch size
(``lowbit.algorithms.early_exit.runner``). Each backend has a parity test against ``fake``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from lowbit.methods import METHOD_ORDER, Method
from lowbit.registry import Registry

#: backend name -> one-line description
BACKENDS: Registry[str] = Registry("deploy backend")
#: backend name -> converter of the (method-converted, eval-mode) model
CONVERTERS: Registry[Callable[[nn.Module], Any]] = Registry("deploy backend converter")

BACKENDS.register("fake", "float simulation of every method (what training runs), eval mode")
CONVERTERS.register("fake", lambda model: model)
BACKENDS.register("int8_cpu", "integer-only encoder (I-BERT): int8 weights, int32 accumulators, dyadic requantization")


def _int8_cpu(model: nn.Module):
    from lowbit.deploy.int8_cpu import convert

    return convert(model)


CONVERTERS.register("int8_cpu", _int8_cpu)
BACKENDS.register("int8_ort", "the int8_cpu integer program as an integer-only ONNX graph run by ONNX Runtime "
                              "(MatMulInteger u8 x u8, int64 dyadic requantization, tabulated i-exp / i-GELU)")


def _int8_ort(model: nn.Module):
    from lowbit.deploy.int8_ort import convert

    return convert(model)


CONVERTERS.register("int8_ort", _int8_ort)
BACKENDS.register("exit_runner", "early exit (DeeBERT) at any batch size: layer by layer, exited samples leave the batch")


def _exit_runner(model: nn.Module):
    from lowbit.algorithms.early_exit.runner import ExitRunner
    from lowbit.errors import check

    check(isinstance(model, ExitRunner), "backend exit_runner needs early_exit=entropy (a model with off-ramps)")
    return model


CONVERTERS.register("exit_runner", _exit_runner)


def deploy(model: nn.Module, methods: Mapping[str, Method], backend: str = "fake"):
    BACKENDS.get(backend)  # unknown backend: one line naming the known ones
    for group in METHOD_ORDER:
        if group in methods:
            model = methods[group].convert(model, backend) or model
    return CONVERTERS.get(backend)(model.eval())
