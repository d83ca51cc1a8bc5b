"""Models the search cannot adapt are refused in one line before Ray starts (exit 2, nothing
written): a vision model, an encoder-decoder classifier (T5, BART); and a checkpoint whose
tensors do not match its config.json is refused in one line where it loads."""

import json

import pytest

from tests.conftest import run_script
from trainables.model import ModelError, model_problem


def _folder(tmp_path, name: str, config: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


VIT = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "image_size": 224, "num_channels": 3}
BART = {"model_type": "bart", "architectures": ["BartForSequenceClassification"], "vocab_size": 50265,
        "is_encoder_decoder": True}
T5 = {"model_type": "t5", "architectures": ["T5ForSequenceClassification"], "vocab_size": 32128,
      "is_encoder_decoder": True}
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152}
BERT_CLASSIFIER = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 30522}


@pytest.mark.parametrize("config,kind,words", [
    (VIT, "classification", "not a text model"),
    (BART, "classification", "an encoder-decoder model, which the search does not support"),
    (T5, "sft", "an encoder-decoder model"),
    (BERT_CLASSIFIER, "sft", "which has no causal LM head"),
])
def test_what_the_search_cannot_adapt_is_named(tmp_path, config, kind, words):
    problem = model_problem(str(_folder(tmp_path, "m", config)), kind)
    assert problem is not None and words in problem and config["architectures"][0] in problem


@pytest.mark.parametrize("config,kind", [(LLAMA, "sft"), (LLAMA, "classification"), (BERT_CLASSIFIER, "classification")])
def test_text_encoders_and_decoders_pass(tmp_path, config, kind):
    assert model_problem(str(_folder(tmp_path, "m", config)), kind) is None


@pytest.mark.parametrize("config,words", [(VIT, "not a text model"), (BART, "encoder-decoder")])
def test_the_cli_refuses_them_in_one_line_before_ray(tmp_path, config, words):
    folder = _folder(tmp_path, "model", config)
    proc = run_script("run", "--config", "smoke", "--set", f"model.name={folder}", "--output-dir", tmp_path / "out",
                      timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert "preparing" not in proc.stdout  # before Ray and the model
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_weights_of_another_shape_are_one_line(tmp_path):
    """A decoder folder whose checkpoint was saved from a wider model than its config.json says."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainables.config import ModelConfig
    from trainables.model import load_causal_lm

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2)
    LlamaForCausalLM(LlamaConfig(**{**small, "hidden_size": 32, "intermediate_size": 64})).save_pretrained(tmp_path / "m")
    LlamaConfig(**small).save_pretrained(tmp_path / "m")  # config.json of the smaller model over it
    with pytest.raises(ModelError, match="its weights do not match its config.json") as e:
        load_causal_lm(ModelConfig(name=str(tmp_path / "m")))
    assert "\n" not in str(e.value)
