"""Placements, their budget arithmetic and the model spaces they live in (torch-free but for
`spaces.discovery`, which reads a torch model)."""

from spaces.budget import Budget, BudgetError, make_budget, repair
from spaces.placement import Placement
from spaces.space import ModelSpace

__all__ = ["Budget", "BudgetError", "ModelSpace", "Placement", "make_budget", "repair"]
