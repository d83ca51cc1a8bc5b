"""Every architecture family the tool claims to handle, each as a tiny model built from a config
(offline, random weights): discovery and its aliases, attention vs MLP families, the exact adapter
count against PEFT's, the priors (padding-invariant, with the pooling the architecture calls for)
and one training step on the placement's adapters.

Aliases read the same across families where the role is the same (q, k, v, o, qkv, gate, up, down,
gate_up), so reports and baselines compare across models.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers as T

from spaces.baselines import kind_family
from spaces.discovery import discover
from spaces.placement import Placement
from spaces.priors import compute_priors, is_causal
from trainables.config import Config
from trainables.train import wrap_with_lora

# Random tiny blocks barely change the pooled vectors, so CKA ties across their layers: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::spaces.errors.PriorsWarning")

H, LAYERS, VOCAB = 16, 2, 64
COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=2,
              intermediate_size=24, num_labels=3, pad_token_id=0)
QKVO_UP_DOWN = ["q", "k", "v", "o", "up", "down"]
GATED = ["q", "k", "v", "o", "gate", "up", "down"]
FUSED = ["qkv", "o", "up", "down"]

# name: (config class, overrides, block stack, aliases in discovery order, causal)
ARCHS = {
    "bert": (T.BertConfig, {}, "bert.encoder.layer", QKVO_UP_DOWN, False),
    "roberta": (T.RobertaConfig, {}, "roberta.encoder.layer", QKVO_UP_DOWN, False),
    "electra": (T.ElectraConfig, dict(embedding_size=H), "electra.encoder.layer", QKVO_UP_DOWN, False),
    "deberta-v2": (T.DebertaV2Config, {}, "deberta.encoder.layer", QKVO_UP_DOWN, False),
    "mpnet": (T.MPNetConfig, {}, "mpnet.encoder.layer", QKVO_UP_DOWN, False),
    "distilbert": (T.DistilBertConfig, dict(dim=H, n_layers=LAYERS, n_heads=2, hidden_dim=24),
                   "distilbert.transformer.layer", QKVO_UP_DOWN, False),
    "modernbert": (T.ModernBertConfig, dict(global_attn_every_n_layers=1), "model.layers",
                   ["qkv", "o", "gate_up", "down"], False),
    "gpt2": (T.GPT2Config, dict(n_embd=H, n_layer=LAYERS, n_head=2), "transformer.h", FUSED, True),
    "opt": (T.OPTConfig, dict(ffn_dim=24, word_embed_proj_dim=H), "model.decoder.layers",
            ["k", "v", "q", "o", "up", "down"], True),
    "gptj": (T.GPTJConfig, dict(n_embd=H, n_layer=LAYERS, n_head=2, rotary_dim=4), "transformer.h",
             ["k", "v", "q", "o", "up", "down"], True),
    "gpt-neox": (T.GPTNeoXConfig, {}, "gpt_neox.layers", FUSED, True),
    "bloom": (T.BloomConfig, dict(n_layer=LAYERS, n_head=2), "transformer.h", FUSED, True),
    "falcon": (T.FalconConfig, {}, "transformer.h", FUSED, True),
    "phi": (T.PhiConfig, {}, "model.layers", QKVO_UP_DOWN, True),
    "phi3": (T.Phi3Config, dict(num_key_value_heads=1), "model.layers", ["o", "qkv", "gate_up", "down"], True),
    "starcoder2": (T.Starcoder2Config, dict(num_key_value_heads=1), "model.layers", QKVO_UP_DOWN, True),
    "llama": (T.LlamaConfig, dict(num_key_value_heads=1), "model.layers", GATED, True),
    "mistral": (T.MistralConfig, dict(num_key_value_heads=1), "model.layers", GATED, True),
    "qwen2": (T.Qwen2Config, dict(num_key_value_heads=1), "model.layers", GATED, True),
    "qwen3": (T.Qwen3Config, dict(num_key_value_heads=1, head_dim=8), "model.layers", GATED, True),
    "gemma": (T.GemmaConfig, dict(num_key_value_heads=1, head_dim=8), "model.layers", GATED, True),
}


def _model(arch: str, seed: int = 0):
    cls, overrides, *_ = ARCHS[arch]
    torch.manual_seed(seed)
    return T.AutoModelForSequenceClassification.from_config(cls(**{**COMMON, **overrides}))


def _batches(sizes=(8,), extra_pad=0, seed=1):
    """Right-padded batches of token lists of lengths 3..10 (ids >= 3: never the pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    examples = [torch.randint(3, VOCAB, (int(n),), generator=g).tolist()
                for n in torch.randint(3, 11, (sum(sizes),), generator=g)]
    out, start = [], 0
    for size in sizes:
        chunk = examples[start:start + size]
        width = max(map(len, chunk)) + extra_pad
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, :len(e)], mask[i, :len(e)] = torch.tensor(e), 1
        out.append({"input_ids": ids, "attention_mask": mask})
        start += size
    return out


def _random_placement(space, rng):
    sites = rng.sample(space.sites(), rng.randint(1, len(space.sites())))
    grid = [[0] * space.n_layers for _ in space.kinds]
    for k, l in sites:
        grid[k][l] = rng.choice([1, 2, 4])
    return Placement(space.aliases, tuple(tuple(r) for r in grid))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_discovery_and_aliases(arch):
    _, _, prefix, aliases, _ = ARCHS[arch]
    space = discover(_model(arch))
    assert space.block_prefix == prefix and space.n_layers == LAYERS
    assert list(space.aliases) == aliases, list(zip(space.aliases, space.kinds))
    assert len(space.sites()) == LAYERS * len(aliases)
    # attention vs MLP (the structural baselines) is known for every kind of every family
    families = {a: kind_family(k) for a, k in zip(space.aliases, space.kinds)}
    assert all(f in ("attention", "mlp") for f in families.values()), families
    assert {a for a, f in families.items() if f == "mlp"} == {"gate", "up", "down", "gate_up"} & set(aliases)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_adapter_count_equals_peft_and_one_step_trains(arch):
    """The analytic count is PEFT's for a random mixed-rank placement, exactly the placement's modules
    are adapted, and one optimiser step moves their adapters (and nothing frozen)."""
    model = _model(arch)
    space = discover(model)
    placement = _random_placement(space, random.Random(arch))
    peft_model = wrap_with_lora(model, placement, space, Config())
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert placement.adapter_params(space) == sum(p.numel() for p in lora.values())
    adapted = {n.rsplit(".lora_A", 1)[0] for n in lora if ".lora_A." in n}
    assert adapted == {f"base_model.model.{t}" for t in placement.target_modules(space)}

    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    peft_model.train()
    batch = _batches()[0]
    loss = peft_model(**batch, labels=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2).step()
    lora_b = [p for n, p in lora.items() if ".lora_B." in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero; one step moved it
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_priors_with_the_pooling_the_architecture_calls_for(arch):
    causal = ARCHS[arch][4]
    model = _model(arch)
    space = discover(model)
    model.eval()
    assert is_causal(model, model.get_submodule(space.block_prefix), _batches()[0]) is causal
    tight = compute_priors(model, space, _batches((8,)))
    padded = compute_priors(model, space, _batches((3, 5), extra_pad=4))
    assert tight.pooling == ("last" if causal else "mean") and tight.causal is causal
    # Every token counted once, padding nowhere: the batching and the padding change nothing.
    assert tight.n_tokens == padded.n_tokens
    for a, b in ((tight.nfn.per_site, padded.nfn.per_site), (tight.act.per_site, padded.act.per_site),
                 ((tight.cka.importance,), (padded.cka.importance,))):
        assert torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                              rtol=1e-4, atol=1e-6)
    assert all(v is not None and v > 0 for row in tight.nfn.per_site for v in row)


def test_aliases_stay_unique_when_a_role_repeats():
    """A decoder BERT has self- and cross-attention queries (both `q`): the clashing kinds are shown
    by the shortest name suffix that tells them apart; the others keep their short aliases."""
    model = T.BertForSequenceClassification(T.BertConfig(**{**COMMON, "is_decoder": True, "add_cross_attention": True}))
    space = discover(model)
    aliases = dict(zip(space.kinds, space.aliases))
    assert len(set(space.aliases)) == len(space.aliases)
    assert aliases["attention.self.query"] == "attention.self.query"
    assert aliases["crossattention.self.query"] == "crossattention.self.query"
    assert (aliases["attention.output.dense"], aliases["intermediate.dense"], aliases["output.dense"]) == ("o", "up", "down")
