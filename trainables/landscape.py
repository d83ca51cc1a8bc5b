"""Synthetic placement landscapes whose site values are known: training replaced by a formula.

Where it sits: a stand-in for **train**, torch-free. `benchmarks/search_efficiency.py` scores its
samplers on these landscapes, and the simulated trainable (`trainables.simulated`) reports from
them, so a whole search (Ray Tune, ASHA, Optuna, MLflow) runs at cluster scale without compute.

    site value     v[k][l] = a_k * b_l * exp(N(0, 0.25^2))       a_k ~ logN(0, 1), b_l ~ logN(0, 0.8^2)
    signal         S = sum over chosen sites of v[k][l] * (r / r_ref) ** 0.5
    metric         m = 0.5 + 0.4 * (1 - exp(-S / (0.3 * S_full)))

with S_full = the signal of every site at r_ref. The scores a prior would see are *informative*
(NFN falls with ln a_k, 1 - CKA and activation rise with ln b_l, each with noise: correlation
~0.9 with the true kind / layer value; the per-site factor is invisible to them), *misleading*
(the same with the signs flipped), or absent ("none").
"""

from __future__ import annotations

import math

import numpy as np

from spaces.placement import Placement
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables.choices import LANDSCAPE_PRIORS, LANDSCAPE_SHAPES, one_of

METRIC_LO, METRIC_HI = 0.5, 0.9


def model_space(shape: str) -> ModelSpace:
    """MiniLM-like (6 layers, hidden 384, BERT module names) or Llama-like (8 layers, 7 kinds)."""
    if shape == "minilm":
        h, f, n = 384, 1536, 6
        kinds = ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense")
        aliases = ("q", "k", "v", "o", "up", "down")
        shapes = [(h, h)] * 4 + [(h, f), (f, h)]
    elif shape == "llama":
        h, f, kv, n = 512, 1408, 128, 8
        kinds = tuple(f"self_attn.{p}_proj" for p in "qkvo") + tuple(f"mlp.{p}_proj" for p in ("gate", "up", "down"))
        aliases = ("q", "k", "v", "o", "gate", "up", "down")
        shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, f), (h, f), (f, h)]
    else:
        raise ValueError(f"landscape shape {shape!r} is not one of {one_of(LANDSCAPE_SHAPES)}")
    return ModelSpace("model.layers", n, kinds, aliases, tuple((s,) * n for s in shapes), (False,) * len(kinds))


class Landscape:
    """True site values and the scores a prior would see (module docstring)."""

    def __init__(self, space: ModelSpace, seed: int, prior: str, r_ref: int = 8):
        if prior not in LANDSCAPE_PRIORS:
            raise ValueError(f"landscape prior {prior!r} is not one of {one_of(LANDSCAPE_PRIORS)}")
        rng = np.random.default_rng(seed)
        n_k, n_l = len(space.kinds), space.n_layers
        self.space, self.r_ref = space, r_ref
        log_a, log_b = rng.normal(0, 1.0, n_k), rng.normal(0, 0.8, n_l)
        self.values = np.exp(log_a[:, None] + log_b[None, :] + rng.normal(0, 0.25, (n_k, n_l)))
        self.s_full = self.signal(Placement.full(space, r_ref))
        self.seed = seed
        sign = {"informative": 1.0, "misleading": -1.0}.get(prior)
        self.scores = None if sign is None else self._scores(rng, sign * _z(log_a), sign * _z(log_b))

    def _scores(self, rng, za, zb) -> PriorScores:
        nfn = [float(1.5 - 0.4 * z + rng.normal(0, 0.15)) for z in za]
        importance = [float(0.3 + 0.1 * z + rng.normal(0, 0.04)) for z in zb]
        act = [float(1.0 + 0.2 * z + rng.normal(0, 0.08)) for z in zb]
        return PriorScores.from_summaries(self.space.aliases, nfn, importance, act)

    def signal(self, p: Placement) -> float:
        return float(sum(self.values[k][l] * (p.ranks[k][l] / self.r_ref) ** 0.5 for k, l in p.sites()))

    def metric(self, p: Placement) -> float:
        return METRIC_LO + (METRIC_HI - METRIC_LO) * (1.0 - math.exp(-self.signal(p) / (0.3 * self.s_full)))


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() or 1.0)
