"""The one value type that travels end to end: a `Placement` of LoRA adapters.

Where it sits: the sampler proposes a placement, the budget code repairs it, the trainable turns it
into a PEFT `LoraConfig`, the tracker logs its key and JSON, the frontier code ranks it.

A placement is a kinds x layers grid of ranks (0 = no adapter), keyed by the module-kind aliases
of a `ModelSpace`. It is immutable, validates itself against its space, has a short canonical key
(`r8 q[0-5] v[0,2,4]`) and round-trips through a dict.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from spaces.space import ModelSpace


def _fmt_layers(layers: list[int]) -> str:
    """[0,1,2,3,5] -> '0-3,5'."""
    runs, start, prev = [], None, None
    for l in layers:
        if start is None:
            start = prev = l
        elif l == prev + 1:
            prev = l
        else:
            runs.append((start, prev))
            start = prev = l
    if start is not None:
        runs.append((start, prev))
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


@dataclass(frozen=True)
class LoraScaling:
    """How a LoRA update is scaled: `scale` is the factor on B A at rank `r_ref`.

    Plain LoRA (`rslora=False`): alpha = scale * r, so the factor alpha / r is `scale` at every
    rank. rsLoRA (Kalajdzievski 2023; PEFT `use_rslora`): the factor is alpha / sqrt(r) with one
    alpha = scale * sqrt(r_ref) for every rank, so it is `scale` at r_ref and shrinks like
    1 / sqrt(r) above it, which keeps the best learning rate nearly constant across ranks.
    """

    scale: float = 2.0
    rslora: bool = False
    r_ref: int = 8

    def alpha(self, rank: int) -> float:
        return self.scale * math.sqrt(self.r_ref) if self.rslora else self.scale * rank

    def factor(self, rank: int) -> float:
        """What multiplies B A at this rank."""
        return self.alpha(rank) / (math.sqrt(rank) if self.rslora else rank)


@dataclass(frozen=True)
class Placement:
    """Which sites get an adapter, and at which rank.

    kinds: the module-kind aliases of the space, in the space's order.
    ranks: per kind, per layer, the LoRA rank (0 = no adapter on that site).
    """

    kinds: tuple[str, ...]
    ranks: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.ranks) != len(self.kinds):
            raise ValueError(f"ranks has {len(self.ranks)} rows for {len(self.kinds)} kinds")
        widths = {len(row) for row in self.ranks}
        if len(widths) > 1:
            raise ValueError("every kind needs one rank per layer")
        for row in self.ranks:
            for r in row:
                if not isinstance(r, int) or r < 0:
                    raise ValueError(f"ranks must be integers >= 0, got {r!r}")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_sites(
        cls, space: ModelSpace, sites: set[tuple[int, int]] | list[tuple[int, int]], rank: int
    ) -> "Placement":
        """A uniform-rank placement on (kind index, layer) sites."""
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        grid = [[0] * space.n_layers for _ in space.kinds]
        for k, l in sites:
            grid[k][l] = rank
        return cls(space.aliases, tuple(tuple(row) for row in grid)).checked(space)

    @classmethod
    def full(cls, space: ModelSpace, rank: int) -> "Placement":
        return cls.from_sites(space, space.sites(), rank)

    def checked(self, space: ModelSpace) -> "Placement":
        """Validate against a space: same kinds, same layers, adapters only on existing sites."""
        if tuple(self.kinds) != tuple(space.aliases):
            raise ValueError(f"placement kinds {self.kinds} do not match the model's {space.aliases}")
        if self.n_layers != space.n_layers:
            raise ValueError(f"placement has {self.n_layers} layers, the model {space.n_layers}")
        for k, l in self.sites():
            if not space.has_site(k, l):
                raise ValueError(f"no module {space.module_name(k, l)} in this model")
        return self

    # ---- queries ---------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0

    def sites(self) -> list[tuple[int, int]]:
        return [(k, l) for k, row in enumerate(self.ranks) for l, r in enumerate(row) if r > 0]

    @property
    def n_sites(self) -> int:
        return len(self.sites())

    def rank_values(self) -> set[int]:
        return {r for row in self.ranks for r in row if r > 0}

    def is_empty(self) -> bool:
        return not self.rank_values()

    def adapter_params(self, space: ModelSpace) -> int:
        """Exact LoRA parameter count: sum over sites of r * (d_in + d_out)."""
        return sum(self.ranks[k][l] * space.site_width(k, l) for k, l in self.sites())

    @property
    def key(self) -> str:
        """Short canonical key, e.g. `r8 q[0-5] v[0,2,4]`; mixed ranks as `q[0-5]r8`."""
        ranks = self.rank_values()
        if not ranks:
            return "empty"
        parts = []
        uniform = len(ranks) == 1
        for alias, row in zip(self.kinds, self.ranks):
            by_rank: dict[int, list[int]] = {}
            for l, r in enumerate(row):
                if r:
                    by_rank.setdefault(r, []).append(l)
            for r, layers in sorted(by_rank.items()):
                parts.append(f"{alias}[{_fmt_layers(layers)}]" + ("" if uniform else f"r{r}"))
        prefix = f"r{next(iter(ranks))} " if uniform else ""
        return prefix + " ".join(parts)

    # ---- round trips -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"kinds": list(self.kinds), "ranks": [list(r) for r in self.ranks], "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> "Placement":
        return cls(tuple(d["kinds"]), tuple(tuple(int(r) for r in row) for row in d["ranks"]))

    @classmethod
    def from_key(cls, key: str, space: ModelSpace) -> "Placement":
        """Parse a canonical key back: `r8 q[0-5] v[0,2,4]`, or with per-kind ranks `q[0-5]r8 v[1]r4`."""
        import re

        tokens = key.split()
        rank = None
        if tokens and re.fullmatch(r"r\d+", tokens[0]):
            rank = int(tokens.pop(0)[1:])
        grid = [[0] * space.n_layers for _ in space.kinds]
        for token in tokens:
            m = re.fullmatch(r"([^\[\]\s]+)\[([\d,\-]+)\](?:r(\d+))?", token)
            if not m or (m.group(3) is None) == (rank is None):
                raise ValueError(f"placement key {key!r}: cannot read {token!r}; expected e.g. 'r8 q[0-5] v[0,2]'")
            k = space.kind_index(m.group(1))
            r = rank if rank is not None else int(m.group(3))
            for part in m.group(2).split(","):
                a, _, b = part.partition("-")
                for layer in range(int(a), int(b or a) + 1):
                    if not 0 <= layer < space.n_layers:
                        raise ValueError(f"placement key {key!r}: layer {layer} is outside 0-{space.n_layers - 1}")
                    grid[k][layer] = r
        return cls(space.aliases, tuple(tuple(row) for row in grid)).checked(space)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "Placement":
        return cls.from_dict(json.loads(s))

    # ---- PEFT ------------------------------------------------------------------------------
    def target_modules(self, space: ModelSpace) -> list[str]:
        """Exact fully-qualified module names, never suffixes or regexes."""
        return [space.module_name(k, l) for k, l in self.sites()]

    def lora_config_kwargs(self, space: ModelSpace, scaling: LoraScaling = LoraScaling(), dropout: float = 0.0) -> dict:
        """Keyword arguments for `peft.LoraConfig` that adapt exactly this placement's sites.

        Uniform rank: one `r`. Mixed ranks: `rank_pattern` keyed by anchored, escaped full names
        (PEFT matches pattern keys as regexes against suffixes; `^...$` pins each to one module).
        A kind that is a transformers `Conv1D` (GPT-2) needs `fan_in_fan_out=True`; PEFT applies it
        per config, so a placement mixing Conv1D and Linear kinds is not expressible and refused.
        """
        import re

        if self.is_empty():
            raise ValueError("an empty placement has no LoRA config")
        self.checked(space)
        ranks = sorted(self.rank_values())
        base = ranks[-1]
        fifo = {space.fan_in_fan_out[k] for k, _ in self.sites()}
        if len(fifo) > 1:
            raise ValueError("placement mixes Conv1D and Linear modules; PEFT needs one fan_in_fan_out")
        kwargs = {
            "r": base,
            "lora_alpha": scaling.alpha(base),
            "lora_dropout": dropout,
            "target_modules": self.target_modules(space),
            "fan_in_fan_out": fifo.pop(),
            "use_rslora": scaling.rslora,
        }
        if len(ranks) > 1:
            kwargs["rank_pattern"] = {
                f"^{re.escape(space.module_name(k, l))}$": self.ranks[k][l]
                for k, l in self.sites()
                if self.ranks[k][l] != base
            }
            if not scaling.rslora:  # rsLoRA: one alpha for every rank
                kwargs["alpha_pattern"] = {p: scaling.alpha(r) for p, r in kwargs["rank_pattern"].items()}
        return kwargs
