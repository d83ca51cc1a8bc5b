"""The placement priors' scores as one typed value (no torch).

Where it sits: *score* -> sample. `spaces.priors.compute_priors` computes a `PriorScores` from one
hooked forward pass; the baselines (`spaces.baselines`), the prior sampler, the heatmap and
`search/score.py` read it; it travels from a Ray worker to the driver by pickle and is stored as
`scores.json` (`to_dict` / `from_dict`, the layout documented on `PriorScores`).

Grids are kinds x layers, in the `ModelSpace`'s kind order, with None where a layer lacks a kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Grid = tuple[tuple[float | None, ...], ...]

# CKA importance below this (CKA above 0.999): the block barely changes the pooled vectors, and
# the order among such layers is round-off and calibration noise, not a ranking.
CKA_TIE_IMPORTANCE = 1e-3

# How CKA pools one vector per example (priors.pooling; `spaces.priors.resolve_pooling`).
POOLINGS = {
    "auto": "last on causal decoders, mean on encoders (measured on the model)",
    "mean": "the mean over non-pad tokens",
    "cls": "the first token",
    "last": "the last non-pad token",
}


def _grid(rows) -> Grid:
    return tuple(tuple(None if v is None else float(v) for v in row) for row in rows)


def _vector(values) -> tuple[float | None, ...]:
    return tuple(None if v is None else float(v) for v in values)


@dataclass(frozen=True)
class SiteScores:
    """A score per site and its mean over layers per kind: PLoP's normalised feature norm (low =
    adapt first) and the gradient sensitivity ||grad_W L||_F / ||W||_F (high = adapt first)."""

    per_site: Grid
    per_kind: dict[str, float | None]


@dataclass(frozen=True)
class CkaScores:
    """Linear CKA between each block's input and output. per_layer is None where degenerate
    (zero-variance input or output); importance = 1 - CKA, and the median importance of the other
    layers (`neutral_importance`) for degenerate ones, so they rank mid-pack."""

    per_layer: tuple[float | None, ...]
    importance: tuple[float, ...]
    degenerate: tuple[bool, ...]
    neutral_importance: float

    def tied_layers(self) -> list[int]:
        """The non-degenerate layers whose importance is below `CKA_TIE_IMPORTANCE`: near-ties."""
        return [l for l, (v, d) in enumerate(zip(self.importance, self.degenerate))
                if not d and v < CKA_TIE_IMPORTANCE]


@dataclass(frozen=True)
class ActScores:
    """Mean input norm per site; per_site_normalized divides by the kind's mean over layers;
    per_layer is the mean of a layer's normalised sites: high = adapt first."""

    per_site: Grid
    per_site_normalized: Grid
    per_layer: tuple[float | None, ...]


@dataclass(frozen=True)
class PriorScores:
    """Every prior for one model and calibration set.

    kinds: the space's aliases; n_examples / n_tokens: the calibration set (non-pad tokens);
    pooling: how CKA pooled one vector per example (resolved: a name of `POOLINGS`, never
    `auto`); causal: whether the model is a causal decoder (None where unknown); cka_examples:
    the examples CKA pooled (a causal model's one-token examples are left out). grad is None
    unless gradients were asked for.
    """

    kinds: tuple[str, ...]
    n_layers: int
    nfn: SiteScores
    cka: CkaScores
    act: ActScores
    n_examples: int = 0
    n_tokens: int = 0
    pooling: str = "mean"
    grad: SiteScores | None = field(default=None)  # one backward pass; None unless asked for
    kappa: SiteScores | None = field(default=None)  # KappaTune's condition numbers (spaces.kappa)
    causal: bool | None = None
    cka_examples: int = 0

    @classmethod
    def from_summaries(cls, kinds, kind_nfn, layer_importance, layer_act) -> "PriorScores":
        """Scores known only per kind (NFN) and per layer (1 - CKA, activation), e.g. those of a
        synthetic landscape: per-site grids repeat the kind's or the layer's value."""
        kinds, n_layers = tuple(kinds), len(layer_importance)
        nfn, act = _vector(kind_nfn), _vector(layer_act)
        return cls(
            kinds=kinds, n_layers=n_layers,
            nfn=SiteScores(tuple((v,) * n_layers for v in nfn), dict(zip(kinds, nfn))),
            cka=CkaScores((None,) * n_layers, tuple(float(v) for v in layer_importance), (False,) * n_layers,
                          0.0),
            act=ActScores(tuple(tuple(act) for _ in kinds), tuple(tuple(act) for _ in kinds), tuple(act)),
        )

    # ---- checks ------------------------------------------------------------------------------
    def check(self, space) -> "PriorScores":
        """Raise when these scores are for another model than `space`."""
        if tuple(self.kinds) != tuple(space.aliases) or self.n_layers != space.n_layers:
            raise ValueError(
                f"scores are for kinds {list(self.kinds)} x {self.n_layers} layers, the space has "
                f"{list(space.aliases)} x {space.n_layers}: recompute priors for this model"
            )
        return self

    def cka_warning(self) -> str | None:
        """One line when CKA cannot rank most layers (more than half are near-ties), else None."""
        tied = self.cka.tied_layers()
        if 2 * len(tied) <= self.n_layers:
            return None
        fix = ("set priors.pooling=auto (or last)" if self.causal and self.pooling != "last"
               else "try another priors.pooling or more calibration examples")
        return (f"CKA importance is below {CKA_TIE_IMPORTANCE} for {len(tied)} of {self.n_layers} layers "
                f"(pooling {self.pooling!r}): the CKA prior cannot rank them and orders them by noise; {fix}")

    def kind_nfn(self) -> list[float | None]:
        """Layer-averaged NFN per kind, in kind order."""
        return [self.nfn.per_kind.get(a) for a in self.kinds]

    # ---- scores.json ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "n_examples": self.n_examples,
            "n_tokens": self.n_tokens,
            "pooling": self.pooling,
            "causal": self.causal,
            "cka_examples": self.cka_examples,
            "kinds": list(self.kinds),
            "n_layers": self.n_layers,
            "nfn": {"per_site": [list(r) for r in self.nfn.per_site], "per_kind": dict(self.nfn.per_kind)},
            "cka": {"per_layer": list(self.cka.per_layer), "importance": list(self.cka.importance),
                    "degenerate": list(self.cka.degenerate), "neutral_importance": self.cka.neutral_importance},
            "act": {"per_site": [list(r) for r in self.act.per_site],
                    "per_site_normalized": [list(r) for r in self.act.per_site_normalized],
                    "per_layer": list(self.act.per_layer)},
            "grad": None if self.grad is None else {"per_site": [list(r) for r in self.grad.per_site],
                                                    "per_kind": dict(self.grad.per_kind)},
            "kappa": None if self.kappa is None else {"per_site": [list(r) for r in self.kappa.per_site],
                                                      "per_kind": dict(self.kappa.per_kind)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PriorScores":
        grad = d.get("grad")
        return cls(
            kinds=tuple(d["kinds"]),
            n_layers=int(d["n_layers"]),
            nfn=SiteScores(_grid(d["nfn"]["per_site"]), dict(d["nfn"]["per_kind"])),
            cka=CkaScores(_vector(d["cka"]["per_layer"]), tuple(float(v) for v in d["cka"]["importance"]),
                          tuple(bool(v) for v in d["cka"]["degenerate"]), float(d["cka"]["neutral_importance"])),
            act=ActScores(_grid(d["act"]["per_site"]), _grid(d["act"]["per_site_normalized"]),
                          _vector(d["act"]["per_layer"])),
            n_examples=int(d.get("n_examples", 0)),
            n_tokens=int(d.get("n_tokens", 0)),
            pooling=d.get("pooling", "mean"),
            grad=None if not grad else SiteScores(_grid(grad["per_site"]), dict(grad["per_kind"])),
            kappa=None if not d.get("kappa") else SiteScores(_grid(d["kappa"]["per_site"]), dict(d["kappa"]["per_kind"])),
            causal=d.get("causal"),
            cka_examples=int(d.get("cka_examples", 0)),
        )
