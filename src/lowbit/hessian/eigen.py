"""Hessian-vector products and top-eigenvalue solvers on lists of tensors.

A vector is a list of tensors shaped like the parameters of one block. ``hvp_from_grads``
differentiates gradients that were built once with ``create_graph=True``: every HVP of
every block reuses that graph (one forward/backward per batch, not one per block).
``power_iteration`` follows the Q-BERT/PyHessian code (stop when the eigenvalue changes by
less than ``tol`` relative); ``lanczos`` builds a Krylov basis with full
reorthogonalisation and needs far fewer HVPs for the same tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lowbit.errors import check
from lowbit.registry import Registry

Vector = list[torch.Tensor]
HVP = Callable[[Vector], Vector]


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def normalize(v: Sequence[torch.Tensor]) -> Vector:
    norm = torch.sqrt(dot(v, v)) + 1e-12
    return [x / norm for x in v]


def hvp_from_grads(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> HVP:
    """H·v for the block ``params``, from ``grads = d loss / d params`` built with create_graph=True.

    ``grad(g, θ, grad_outputs=v) = (∂g/∂θ)ᵀ v = H v`` (H is symmetric): no explicit g·v product."""
    grads, params = list(grads), list(params)

    def hvp(v: Vector) -> Vector:
        out = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(out, params)]

    return hvp


def averaged_hvp(hvps: Sequence[HVP], weights: Sequence[float]) -> HVP:
    """H·v of the weighted average loss over several batches (the code's data-summed Hessian)."""
    total = float(sum(weights))

    def hvp(v: Vector) -> Vector:
        acc = [torch.zeros_like(x) for x in v]
        for f, w in zip(hvps, weights):
            for a, h in zip(acc, f(v)):
                a.add_(h, alpha=w / total)
        return acc

    return hvp


@dataclass
class EigenResult:
    eigenvalue: float
    iterations: int  # HVPs used
    converged: bool
    history: list[float] = field(default_factory=list)


def _random_vector(like: Sequence[torch.Tensor], generator: torch.Generator) -> Vector:
    return normalize([torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in like])


def power_iteration(hvp: HVP, like: Sequence[torch.Tensor], tol: float = 1e-2, max_iter: int = 100,
                    seed: int = 0) -> EigenResult:
    """Dominant eigenvalue (largest |λ|, with its sign) by power iteration on H·v."""
    v = _random_vector(like, torch.Generator().manual_seed(seed))
    eigenvalue, history = None, []
    for i in range(1, max_iter + 1):
        hv = hvp(v)
        new = float(dot(hv, v))
        history.append(new)
        v = normalize(hv)
        if eigenvalue is not None and abs(new - eigenvalue) / (abs(eigenvalue) + 1e-6) < tol:
            return EigenResult(new, i, True, history)
        eigenvalue = new
    return EigenResult(eigenvalue, max_iter, False, history)


def lanczos(hvp: HVP, like: Sequence[torch.Tensor], tol: float = 1e-2, max_iter: int = 100,
            seed: int = 0) -> EigenResult:
    """Dominant eigenvalue by Lanczos (full reorthogonalisation, float64 tridiagonal).

    Stops when the dominant Ritz value changes by less than ``tol`` relative between steps,
    or when the Krylov space is exhausted (an invariant subspace: the Ritz value is exact)."""
    q = _random_vector(like, torch.Generator().manual_seed(seed))
    basis: list[Vector] = []
    alphas: list[float] = []
    betas: list[float] = []
    previous, history = None, []
    max_iter = min(max_iter, sum(p.numel() for p in like))
    for i in range(1, max_iter + 1):
        basis.append(q)
        w = hvp(q)
        alpha = float(dot(w, q))
        alphas.append(alpha)
        for b in basis:  # full reorthogonalisation (twice is enough, Kahan–Parlett)
            c = dot(w, b)
            w = [x - c * y for x, y in zip(w, b)]
        for b in basis:
            c = dot(w, b)
            w = [x - c * y for x, y in zip(w, b)]
        beta = float(torch.sqrt(dot(w, w)))
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        ritz = torch.linalg.eigvalsh(tri)
        current = float(ritz[ritz.abs().argmax()])
        history.append(current)
        exhausted = beta < 1e-10 * max(1.0, abs(current))
        if exhausted or (previous is not None and abs(current - previous) / (abs(previous) + 1e-6) < tol):
            return EigenResult(current, i, True, history)
        previous = current
        betas.append(beta)
        q = [x / beta for x in w]
    return EigenResult(previous if previous is not None else float("nan"), max_iter, False, history)


EIGEN_SOLVERS: Registry[Callable[..., EigenResult]] = Registry("hessian.method")
EIGEN_SOLVERS.register("power", power_iteration)
EIGEN_SOLVERS.register("lanczos", lanczos)


def top_eigenvalue(method: str, hvp: HVP, like: Sequence[torch.Tensor], tol: float, max_iter: int,
                   seed: int = 0) -> EigenResult:
    check(tol > 0, f"hessian.tol must be positive, got {tol!r}")
    check(isinstance(max_iter, int) and max_iter >= 1, f"hessian.max_iter must be a positive integer, got {max_iter!r}")
    return EIGEN_SOLVERS.get(method)(hvp, like, tol=tol, max_iter=max_iter, seed=seed)
