"""Tucker decomposition by HOOI, as tensorly's `tucker(init="svd")` computes it, with every SVD of a
wide unfolding replaced by the eigendecomposition of its small Gram matrix.

TRAWL stacks a layer's weights across the 30 layers of SmolLM2 into (30, 1536, 576) tensors whose
unfoldings are up to 30 x 884,736. tensorly 0.10 takes a full thin SVD of each unfolding in every
iteration (33 SVDs for 10 iterations): one 10%-removal point of the FC grid ran more than 25 minutes
on 2 cores without finishing. The leading left singular vectors of an (n, m) unfolding are the
leading eigenvectors of its (n, n) Gram matrix, n <= 1536 here: the same factors (to 4e-12 in
float64) 2.5-3.8x faster on SmolLM2's stacked k and q weights at 2 threads
(`PYTHONPATH=. python benchmarks/tucker_speed.py`); float64 keeps the squared condition number
harmless at these ranks.
"""

from __future__ import annotations

import math

import torch


def leading_left_vectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k left singular vectors of `matrix` (n, m), signs as tensorly's svd_flip sets them
    (each column's largest-magnitude entry positive)."""
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)  # ascending eigenvalues
    u = vectors[:, -k:].flip(1)
    return u * torch.sign(u[u.abs().argmax(0), torch.arange(k)])


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    return torch.movedim(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def project(tensor: torch.Tensor, factors: list[torch.Tensor], skip: int | None = None) -> torch.Tensor:
    """`tensor` times factor^T along every mode but `skip`."""
    for mode, factor in enumerate(factors):
        if mode != skip:
            tensor = torch.movedim(torch.tensordot(tensor, factor, dims=([mode], [0])), -1, mode)
    return tensor


def tucker(tensor: torch.Tensor, ranks: list[int], n_iter_max: int = 10, tol: float = 1e-7
           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(core, factors) of `tensor`: HOSVD start, then HOOI sweeps until the relative error changes by
    less than `tol` (after the third) or `n_iter_max` sweeps, as tensorly's tucker does."""
    ranks = [min(r, n) for r, n in zip(ranks, tensor.shape)]
    factors = [leading_left_vectors(unfold(tensor, m), ranks[m]) for m in range(tensor.ndim)]
    norm = torch.linalg.norm(tensor)
    core, errors = project(tensor, factors), []
    for iteration in range(n_iter_max):
        for m in range(tensor.ndim):
            factors[m] = leading_left_vectors(unfold(project(tensor, factors, skip=m), m), ranks[m])
        core = project(tensor, factors)
        errors.append(math.sqrt(abs(norm**2 - torch.linalg.norm(core) ** 2)) / norm)
        if iteration > 1 and abs(errors[-2] - errors[-1]) < tol:
            break
    return core, factors
