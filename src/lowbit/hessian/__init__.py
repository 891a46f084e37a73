"""Q-BERT Hessian spectrum: top eigenvalue per block (``python -m lowbit.hessian``)."""

from lowbit.hessian.eigen import EIGEN_SOLVERS, EigenResult, hvp_from_grads, lanczos, power_iteration, top_eigenvalue
from lowbit.hessian.spectrum import BLOCK_KINDS, Block, block_spectrum, hessian_blocks

__all__ = [
           "BLOCK_KINDS",
           "EIGEN_SOLVERS",
           "Block",
           "EigenResult",
           "block_spectrum",
           "hessian_blocks",
           "hvp_from_grads",
           "lanczos",
           "power_iteration",
           "top_eigenvalue",
]
