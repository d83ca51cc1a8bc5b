"""The adaptable sites of one model, as plain data (no torch).

Where it sits: score -> sample -> train -> track -> frontier all start from a `ModelSpace`.
`spaces.discovery` builds it from a torch model once; everything downstream (the sampler, the
budget arithmetic, the tracker) reads this JSON-friendly value and never needs the model again.

A *site* is one adaptable linear module in one repeated block: (layer index, module kind).
A *kind* is the module's name relative to its block (`attention.self.query`), shown by a short
alias (`q`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpace:
    """Every eligible site of a model, by kind and layer.

    block_prefix: fully qualified name of the stack of repeated blocks (`bert.encoder.layer`).
    kinds: module names relative to a block, in the order they first appear in a block.
    aliases: one short display name per kind (`q`, `down`, `qkv`), unique.
    shapes: per kind, per layer, (d_in, d_out) of the module; (0, 0) where a layer lacks the kind.
    fan_in_fan_out: per kind, True for transformers `Conv1D` (weights stored transposed).
    """

    block_prefix: str
    n_layers: int
    kinds: tuple[str, ...]
    aliases: tuple[str, ...]
    shapes: tuple[tuple[tuple[int, int], ...], ...]
    fan_in_fan_out: tuple[bool, ...]
    model_type: str = ""
    _alias_index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        if not self.kinds:
            raise ValueError("a ModelSpace needs at least one module kind")
        if len(set(self.aliases)) != len(self.aliases) or len(self.aliases) != len(self.kinds):
            raise ValueError(f"aliases must be unique, one per kind: {self.aliases}")
        if len(self.shapes) != len(self.kinds) or any(len(s) != self.n_layers for s in self.shapes):
            raise ValueError("shapes must be kinds x layers")
        object.__setattr__(self, "_alias_index", {a: i for i, a in enumerate(self.aliases)})

    # ---- lookups -------------------------------------------------------------------------
    def kind_index(self, alias: str) -> int:
        try:
            return self._alias_index[alias]
        except KeyError:
            raise KeyError(
                f"unknown module kind {alias!r}; this model has: {', '.join(self.aliases)}"
            ) from None

    def has_site(self, kind: int, layer: int) -> bool:
        return self.shapes[kind][layer] != (0, 0)

    def sites(self) -> list[tuple[int, int]]:
        """All eligible (kind index, layer) pairs, kind-major."""
        return [
            (k, l) for k in range(len(self.kinds)) for l in range(self.n_layers) if self.has_site(k, l)
        ]

    def module_name(self, kind: int, layer: int) -> str:
        """The fully qualified module name PEFT must target for one site."""
        return f"{self.block_prefix}.{layer}.{self.kinds[kind]}"

    def site_width(self, kind: int, layer: int) -> int:
        """d_in + d_out: a rank-r adapter on this site has r * width parameters."""
        d_in, d_out = self.shapes[kind][layer]
        return d_in + d_out

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "block_prefix": self.block_prefix,
            "n_layers": self.n_layers,
            "kinds": list(self.kinds),
            "aliases": list(self.aliases),
            "shapes": [[list(s) for s in row] for row in self.shapes],
            "fan_in_fan_out": list(self.fan_in_fan_out),
            "model_type": self.model_type,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpace":
        return cls(
            block_prefix=d["block_prefix"],
            n_layers=int(d["n_layers"]),
            kinds=tuple(d["kinds"]),
            aliases=tuple(d["aliases"]),
            shapes=tuple(tuple((int(a), int(b)) for a, b in row) for row in d["shapes"]),
            fan_in_fan_out=tuple(bool(x) for x in d["fan_in_fan_out"]),
            model_type=d.get("model_type", ""),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def describe(self) -> str:
        kinds = ", ".join(f"{a}={k}" for a, k in zip(self.aliases, self.kinds))
        return f"{self.n_layers} layers under {self.block_prefix}; kinds: {kinds}"
