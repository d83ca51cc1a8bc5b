"""Shared test setup: the hub is off (any download fails loudly), torch uses one thread (tiny
models on a shared 2-core machine run far faster without OpenMP contention), tiny model builders."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_models():
    """(name, model factory) for a tiny BERT, GPT-2 and Llama sequence classifier."""
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification)

    return {
        "bert": lambda: BertForSequenceClassification(BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=24, num_labels=3)),
        "gpt2": lambda: GPT2ForSequenceClassification(GPT2Config(
            vocab_size=64, n_embd=16, n_layer=3, n_head=2, num_labels=3, pad_token_id=0,
            bos_token_id=0, eos_token_id=0)),
        "llama": lambda: LlamaForSequenceClassification(LlamaConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=24, num_labels=3, pad_token_id=0)),
    }
