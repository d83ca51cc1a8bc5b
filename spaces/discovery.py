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

# Display aliases: a role reads the same in every family (q, k, v, o, qkv, gate, up, down,
# gate_up), so that reports and baselines compare across models. A kind (the module's name relative
# to its block) is looked up whole, then by its last two name components, then by its last one;
# anything not listed keeps its last name component. Aliases are made unique within a model in
# `_aliases`.
_BY_NAME = {
    # BERT-family encoders (BERT, RoBERTa, Electra, DeBERTa-v2, MPNet): the bare `output.dense` is
    # the MLP's down projection; only these exact names, so a cross-attention's
    # `crossattention.output.dense` is not taken for it.
    "attention.output.dense": "o",
    "intermediate.dense": "up",
    "output.dense": "down",
}
_BY_TAIL = {
    # GPT-2 and StarCoder2 reuse `c_proj` for the attention output and the MLP down projection.
    "attn.c_proj": "o",
    "mlp.c_proj": "down",
    # Phi, GPT-NeoX, Falcon, Bloom: the attention output is a bare `dense`.
    "self_attn.dense": "o",
    "attention.dense": "o",
    "self_attention.dense": "o",
    # ModernBERT reuses `Wo`.
    "attn.Wo": "o",
    "mlp.Wo": "down",
}
_BY_LAST = {
    # queries, keys, values: BERT, Llama-style, OPT, GPT-J; DistilBERT; DeBERTa-v2
    **dict.fromkeys(("query", "q_proj", "q_lin", "query_proj"), "q"),
    **dict.fromkeys(("key", "k_proj", "k_lin", "key_proj"), "k"),
    **dict.fromkeys(("value", "v_proj", "v_lin", "value_proj"), "v"),
    # fused query-key-value: GPT-2, GPT-NeoX / Falcon / Bloom, Phi-3, ModernBERT
    **dict.fromkeys(("c_attn", "query_key_value", "qkv_proj", "Wqkv"), "qkv"),
    # attention output: Llama-style, OPT / GPT-J, DistilBERT
    **dict.fromkeys(("o_proj", "out_proj", "out_lin"), "o"),
    # MLP: gated (Llama-style; Phi-3 and ModernBERT fuse gate and up), and plain up / down
    "gate_proj": "gate",
    **dict.fromkeys(("gate_up_proj", "Wi"), "gate_up"),
    **dict.fromkeys(("up_proj", "fc1", "lin1", "fc_in", "c_fc", "dense_h_to_4h"), "up"),
    **dict.fromkeys(("down_proj", "fc2", "lin2", "fc_out", "dense_4h_to_h"), "down"),
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


def _alias(kind: str) -> str:
    parts = kind.split(".")
    tail, last = ".".join(parts[-2:]), parts[-1]
    return _BY_NAME.get(kind) or _BY_TAIL.get(tail) or _BY_LAST.get(last) or last


def _aliases(kinds: list[str]) -> list[str]:
    """One alias per kind, unique within the model: kinds that would share one (a decoder's self-
    and cross-attention queries are both `q`) are shown by the shortest suffix of their names that
    tells them apart, or in full."""
    aliases = [_alias(k) for k in kinds]
    for alias in set(aliases):
        clash = [i for i, a in enumerate(aliases) if a == alias]
        if len(clash) < 2:
            continue
        parts = [kinds[i].split(".") for i in clash]
        for n in range(1, max(map(len, parts)) + 1):
            names = [".".join(p[-n:]) for p in parts]
            if len(set(names)) == len(names):
                break
        for i, name in zip(clash, names):
            aliases[i] = name
    if len(set(aliases)) != len(aliases):  # a suffix equal to another kind's alias: full names
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
