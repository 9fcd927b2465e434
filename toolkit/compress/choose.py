"""One option per group within a parameter budget (a multiple-choice knapsack), as every budgeted
allocation needs it: a group is a layer (its options: dense, or a rank) or the embedding and head
together (dense, or a compressed table and head policy). Each option keeps some parameters and has a
predicted cost (a layer's output error, or a measured rise in KL); the choice minimises the summed
cost with the kept parameters at most the budget.

Lagrangian relaxation first: at a multiplier lam every group takes the option minimising
cost + lam * params, and lam is bisected to the smallest that fits. What that leaves of the budget
is then spent greedily, the option upgrade saving the most cost per parameter added first, so the
budget is met to within one option step of one group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toolkit.errors import TensoredgeError


@dataclass
class Options:
    """A group's options: parameters each keeps (exact counts) and its predicted cost."""

    params: torch.Tensor  # (n,) float64
    cost: torch.Tensor  # (n,) float64

    def __post_init__(self) -> None:
        self.params, self.cost = self.params.double(), self.cost.double()
        if self.params.shape != self.cost.shape or self.params.numel() == 0:
            raise ValueError("options need as many costs as parameter counts, and at least one")


def smallest(groups: dict[str, Options]) -> float:
    """The fewest parameters any choice keeps."""
    return sum(float(o.params.min()) for o in groups.values())


def choose(groups: dict[str, Options], budget: float) -> dict[str, int]:
    """The index of the chosen option of every group; kept parameters <= budget."""
    low_end = smallest(groups)
    if low_end > budget:
        raise TensoredgeError(f"the budget keeps {budget:,.0f} parameters but the smallest choice keeps "
                              f"{low_end:,.0f}: remove less")
    scale = sum(float(o.params.max()) for o in groups.values()) or 1.0

    def pick(lam: float) -> tuple[dict[str, int], float]:
        chosen, used = {}, 0.0
        for name, o in groups.items():
            score = o.cost + lam * o.params / scale
            best = int(torch.argmin(score))
            ties = torch.nonzero(score <= score[best]).flatten()  # equal scores: the fewer parameters
            best = int(ties[torch.argmin(o.params[ties])])
            chosen[name], used = best, used + float(o.params[best])
        return chosen, used

    low, high = 0.0, 1.0
    for _ in range(200):
        if pick(high)[1] <= budget:
            break
        low, high = high, high * 2
    else:  # only the smallest options fit and the costs are astronomically far apart
        return {name: int(torch.argmin(o.params)) for name, o in groups.items()}
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if pick(mid)[1] > budget else (low, mid)
    chosen, used = pick(high)
    return fill(groups, chosen, budget - used)


def fill(groups: dict[str, Options], chosen: dict[str, int], left: float) -> dict[str, int]:
    """Spend `left` parameters on upgrades (more parameters, lower cost), best saving per parameter
    first, until none fits."""
    names = list(groups)
    params = torch.cat([groups[n].params for n in names])
    cost = torch.cat([groups[n].cost for n in names])
    owner = torch.cat([torch.full((groups[n].params.numel(),), g) for g, n in enumerate(names)])
    offset = torch.tensor([0] + [groups[n].params.numel() for n in names]).cumsum(0)
    now = offset[:-1] + torch.tensor([chosen[n] for n in names])  # flat index of each group's choice
    for _ in range(10 * len(groups) + 100):
        extra = params - params[now][owner]
        saved = cost[now][owner] - cost
        usable = (extra > 0) & (extra <= left) & (saved > 0)
        if not usable.any():
            break
        gain = torch.where(usable, saved / extra.clamp_min(1e-30), torch.full_like(saved, -1.0))
        j = int(torch.argmax(gain))
        left -= float(extra[j])
        now[owner[j]] = j
    return {n: int(now[g] - offset[g]) for g, n in enumerate(names)}


def kept(groups: dict[str, Options], chosen: dict[str, int]) -> float:
    return sum(float(groups[n].params[i]) for n, i in chosen.items())


def total_cost(groups: dict[str, Options], chosen: dict[str, int]) -> float:
    return sum(float(groups[n].cost[i]) for n, i in chosen.items())
