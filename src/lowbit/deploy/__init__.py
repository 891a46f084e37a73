"""Deploy backends: what a trained fake-quant model becomes when it runs for real.

``deploy(model, methods, backend)`` calls every method's ``convert(model, backend)`` in
``METHOD_ORDER``. ``fake`` is the float simulation the model trains with (the identity for every
method so far; distillation drops its teacher). The I-BERT issue adds ``int8_cpu`` (integer
kernels) and the early-exit issue an early-exit runner; each backend registers here with a
parity test against ``fake`` and a benchmark.
"""

from __future__ import annotations

from typing import Mapping

from torch import nn

from lowbit.methods import METHOD_ORDER, Method
from lowbit.registry import Registry

#: backend name -> one-line description
BACKENDS: Registry[str] = Registry("deploy backend")
BACKENDS.register("fake", "float simulation of every method (what training runs), eval mode")


def deploy(model: nn.Module, methods: Mapping[str, Method], backend: str = "fake") -> nn.Module:
    BACKENDS.get(backend)  # unknown backend: one line naming the known ones
    for group in METHOD_ORDER:
        if group in methods:
            model = methods[group].convert(model, backend) or model
    return model.eval()
