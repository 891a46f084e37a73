"""Loss-aware ternarization (LAT, Hou & Kwok 2018) as used by TernaryBERT.

Minimises the curvature-weighted error Σ_i D_i (α·b_i − w_i)² over b ∈ {−1, 0, +1}ⁿ, α > 0,
per range (matrix, or row for word embeddings), with D = sqrt(v̂) + ε the diagonal of Adam's
second moment (bias-corrected) — the diagonal-Hessian approximation of the paper. The
alternating solution is exact per step: for fixed α the best b is sign(w)·[|w| > α/2]
(independent of D), and for fixed b the best α = Σ D|w||b| / Σ D|b|. It starts from TWN's
solution and runs ``iterations`` alternations. Before the optimizer has state (first step)
the quantizer falls back to TWN. ``AdamCurvatureCallback`` reads the optimizer state each
training step and hands D to every LAT quantizer; nothing is copied into checkpoints.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from lowbit.algorithms.ternarybert.twn import TernaryTWNQuantizer, ternarize, twn_threshold_alpha
from lowbit.errors import check
from lowbit.layers import lowbit_layers
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity, PerTensor


def lat_exact_threshold_alpha(grouped: torch.Tensor, curvature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global minimiser of Σ D (α b − w)² per group, in closed form.

    The optimal kept set is the top-k entries by |w| for some k (for any α the best b
    keeps |w| > α/2), and for a kept set α = S_k/T_k with S_k = Σ D|w|, T_k = Σ D over it,
    leaving error Σ D w² − S_k²/T_k. So k = argmax S_k²/T_k over the |w|-sorted prefix
    sums. Exact but a sort per step (~0.3 s for a 1536x384 matrix on CPU), hence opt-in.
    """
    a, order = grouped.detach().abs().sort(dim=1, descending=True)
    d = curvature.detach().gather(1, order)
    s, t = (d * a).cumsum(1), d.cumsum(1)
    k = (s * s / t.clamp_min(1e-12)).argmax(1, keepdim=True)
    alpha = s.gather(1, k) / t.gather(1, k).clamp_min(1e-12)
    # threshold: the largest excluded magnitude (0 when everything is kept)
    nxt = (k + 1).clamp(max=a.shape[1] - 1)
    delta = torch.where(k + 1 < a.shape[1], a.gather(1, nxt), torch.zeros_like(alpha))
    return delta, alpha


def lat_threshold_alpha(grouped: torch.Tensor, curvature: torch.Tensor, iterations: int = 5,
                        threshold_factor: float = 0.7,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (Δ, α) for Σ D (α b − w)² by alternating minimisation from TWN's solution.

    Each alternation can only lower the objective; it stops at a fixed point, which may be a
    local optimum (``lat_exact_threshold_alpha`` gives the global one at a higher cost).
    """
    w = grouped.detach().abs()
    d = curvature.detach()
    delta, alpha = twn_threshold_alpha(grouped, threshold_factor, mask)  # TWN start
    for _ in range(iterations):
        kept = (w > delta).to(w.dtype)
        alpha = (d * w * kept).sum(1, keepdim=True) / (d * kept).sum(1, keepdim=True).clamp_min(1e-12)
        delta = alpha / 2
    return delta, alpha


class TernaryLATQuantizer(TernaryTWNQuantizer):
    """Ternary weights with α and threshold from the D-weighted objective (TWN until D is known)."""

    def __init__(self, granularity: Granularity = PerTensor(), clip: float | None = 2.5,
                 threshold_factor: float = 0.7, iterations: int = 5, solver: str = "alternating"):
        super().__init__(granularity, clip, threshold_factor)
        check(isinstance(iterations, int) and iterations >= 1,
              f"quantizer.lat_iterations must be a positive integer, got {iterations!r}")
        check(solver in ("alternating", "exact"), f"quantizer.lat_solver must be alternating or exact, got {solver!r}")
        self.iterations, self.solver = iterations, solver
        #: D = sqrt(v_hat) + eps for the weight, set each training step by AdamCurvatureCallback
        self.curvature: torch.Tensor | None = None

    def threshold_alpha(self, grouped: torch.Tensor, mask: torch.Tensor | None,
                        curvature: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if curvature is None:
            return twn_threshold_alpha(grouped, self.threshold_factor, mask)
        if self.solver == "exact":
            return lat_exact_threshold_alpha(grouped, curvature)  # pruned zeros are never worth keeping
        return lat_threshold_alpha(grouped, curvature, self.iterations, self.threshold_factor, mask)

    def _grouped_curvature(self, g: Granularity) -> torch.Tensor | None:
        return None if self.curvature is None else g.to_groups(self.curvature)

    def _ternarize(self, grouped: torch.Tensor, mask: torch.Tensor | None, curvature: torch.Tensor | None):
        clipped = Fq.clip_ste(grouped, self.clip)
        delta, alpha = self.threshold_alpha(clipped, mask, curvature)
        return ternarize(clipped, delta, alpha)

    def forward(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        g = self.granularity
        grouped_mask = None if mask is None else g.to_groups(mask)
        return g.from_groups(self._ternarize(g.to_groups(weight), grouped_mask, self._grouped_curvature(g)),
                             weight.shape)

    def forward_rows(self, rows: torch.Tensor, row_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        d = None if self.curvature is None else self.curvature[row_ids.reshape(-1)]
        return self._ternarize(rows, mask, d)

    def cache_key(self) -> tuple:
        c = self.curvature
        return (None,) if c is None else (id(c), c._version)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", solver={self.solver}, iterations={self.iterations}"


class AdamCurvatureCallback(pl.Callback):
    """Before each training step, set D = sqrt(exp_avg_sq / (1 − β2^t)) + ε on every LAT quantizer."""

    def __init__(self, eps: float = 1e-8):
        self.eps = eps

    @staticmethod
    def lat_layers(module: nn.Module):
        for _, layer in lowbit_layers(module):
            if isinstance(layer.quantizer, TernaryLATQuantizer):
                yield layer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        betas = {id(p): group["betas"][1] for group in optimizer.param_groups for p in group["params"]}
        for layer in self.lat_layers(pl_module):
            state = optimizer.state.get(layer.weight, {})
            if "exp_avg_sq" not in state:
                layer.quantizer.curvature = None  # first step (or a frozen weight): TWN
                continue
            step = float(state["step"])
            v_hat = state["exp_avg_sq"] / (1 - betas[id(layer.weight)] ** step)
            layer.quantizer.curvature = v_hat.sqrt().add_(self.eps)

    def on_train_end(self, trainer, pl_module) -> None:
        for layer in self.lat_layers(pl_module):  # eval/export use the last D; drop the optimizer's memory
            if layer.quantizer.curvature is not None:
                layer.quantizer.curvature = layer.quantizer.curvature.clone()
