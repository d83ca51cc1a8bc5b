"""KappaTune's data-free score: the condition number of each site's weight matrix.

Where it sits: score (beside the priors of the forward pass; no data at all). KappaTune adapts the
modules whose weights are best conditioned, kappa = sigma_max / sigma_min lowest first (PEFT ships
the selector as `peft.helpers.find_kappa_target_modules`; `tests/test_priors.py` checks this order
is PEFT's). The per-site values become `PriorScores.kappa` (per site and per kind, low = adapt
first), a fourth score in `search/score.py` and the heatmap, and the `kappa` baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from spaces.scores import SiteScores
from spaces.space import ModelSpace


def condition_number(weight: torch.Tensor) -> float:
    """sigma_max / sigma_min of a 2-D weight (float32 SVD values), +1e-8 below as PEFT does."""
    s = torch.linalg.svdvals(weight.detach().float().reshape(weight.shape[0], -1))
    return float(s[0] / (s[-1] + 1e-8))


def kappa_scores(model: nn.Module, space: ModelSpace) -> SiteScores:
    grid = [[condition_number(model.get_submodule(space.module_name(k, l)).weight) if space.has_site(k, l) else None
             for l in range(space.n_layers)] for k in range(len(space.kinds))]
    per_kind = {}
    for alias, row in zip(space.aliases, grid):
        values = [v for v in row if v is not None]
        per_kind[alias] = sum(values) / len(values) if values else None
    return SiteScores(tuple(tuple(row) for row in grid), per_kind)
