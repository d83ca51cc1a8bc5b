"""Find the adaptable sites of a torch model: the first step before scoring or sampling.

The stack of repeated blocks is the longest `nn.ModuleList` whose children share one class
(`bert.encoder.layer`, `transformer.h`, `model.layers`). Every `nn.Linear` or transformers `Conv1D`
inside those blocks is a site; embeddings, norms, poolers and heads sit outside and never are.
"""

from __future__ import annotations

from torch import nn

from spaces.errors import DiscoveryError
from spaces.space import ModelSpace

__all__ = ["DiscoveryError", "discover", "find_block_stack"]

# Display aliases for module names relative to a block, by architecture family. Anything not
# listed falls back to its last name component, made unique with its parent's name if needed.
_ALIASES = {
    # BERT-family encoders
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "o",
    "intermediate.dense": "up",
    "output.dense": "down",
    # GPT-2 (Conv1D, fused qkv)
    "attn.c_attn": "qkv",
    "attn.c_proj": "o",
    "mlp.c_fc": "up",
    "mlp.c_proj": "down",
    # Llama / Qwen2 / Mistral-style decoders
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}


def _is_adaptable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # transformers' Conv1D (GPT-2) without importing a private path that moves between versions.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def _shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    d_in, d_out = module.weight.shape  # Conv1D stores (d_in, d_out)
    return int(d_in), int(d_out)


def find_block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest ModuleList of same-class blocks that contain linear modules."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1:
            continue
        if not any(_is_adaptable(m) for m in module[0].modules()):
            continue
        n_params = sum(p.numel() for p in module.parameters())
        rank = (len(module), n_params)
        if best is None or rank > best[0]:
            best = (rank, name, module)
    if best is None:
        raise DiscoveryError(
            f"no stack of repeated blocks found in {type(model).__name__}: looked for an "
            "nn.ModuleList of same-class blocks containing nn.Linear or transformers Conv1D "
            "modules (like bert.encoder.layer, transformer.h or model.layers): point model.name at a "
            "transformer whose repeated blocks use nn.Linear (or GPT-2 Conv1D) layers"
        )
    return best[1], best[2]


def _aliases(kinds: list[str]) -> list[str]:
    aliases = [_ALIASES.get(k, k.split(".")[-1]) for k in kinds]
    # Make fallbacks unique: prefer parent.last, then the full relative name.
    for i, a in enumerate(aliases):
        if aliases.count(a) > 1:
            for j in [j for j, b in enumerate(aliases) if b == a]:
                parts = kinds[j].split(".")
                aliases[j] = ".".join(parts[-2:]) if len(parts) > 1 else kinds[j]
    if len(set(aliases)) != len(aliases):
        aliases = list(kinds)
    return aliases


def discover(model: nn.Module) -> ModelSpace:
    """Build the `ModelSpace` of a model: its block stack, module kinds and their shapes."""
    prefix, blocks = find_block_stack(model)
    kinds: list[str] = []
    per_layer: list[dict[str, tuple[tuple[int, int], bool]]] = []
    for block in blocks:
        found = {}
        for rel, module in block.named_modules():
            if rel and _is_adaptable(module):
                found[rel] = (_shape(module), not isinstance(module, nn.Linear))
                if rel not in kinds:
                    kinds.append(rel)
        per_layer.append(found)
    shapes = tuple(
        tuple(layer.get(kind, ((0, 0), False))[0] for layer in per_layer) for kind in kinds
    )
    fifo = tuple(
        any(layer.get(kind, ((0, 0), False))[1] for layer in per_layer) for kind in kinds
    )
    config = getattr(model, "config", None)
    return ModelSpace(
        block_prefix=prefix,
        n_layers=len(blocks),
        kinds=tuple(kinds),
        aliases=tuple(_aliases(kinds)),
        shapes=shapes,
        fan_in_fan_out=fifo,
        model_type=getattr(config, "model_type", "") or "",
    )
