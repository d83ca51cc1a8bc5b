"""The Python API (`search.api`), the LoraConfig it hands to a user's trainer (`trainables.lora`),
`search/deploy.py --lora-config-only` and the `lora-placement` command.

Fast: the LoraConfig on tiny models built from configs (exactly the placement's modules, at its
ranks and scaling, PEFT's trainable count equal to the search's), the same config as a trial's,
a hand-made store for --lora-config-only, the subcommands' dispatch, the API's inputs and errors.
Slow: the README's "Python API" example run as it stands (a smoke search through the API).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spaces.placement import Placement
from tests.conftest import ROOT, _script_env, tiny_models
from trainables.config import Config

# ---- the LoraConfig ------------------------------------------------------------------------------


def _placement(space, mixed: bool) -> Placement:
    """Sites in every kind and layer pattern worth checking: kind 0 in every layer, the last kind
    in layer 1 only, and with `mixed` three ranks."""
    grid = [[0] * space.n_layers for _ in space.kinds]
    grid[0] = [8 if mixed and layer == 0 else 4 for layer in range(space.n_layers)]
    grid[-1][1] = 2 if mixed else 4
    return Placement(space.aliases, tuple(map(tuple, grid))).checked(space)


def _adapted(peft_model) -> dict[str, object]:
    """The adapted modules by their name in the base model: {name: the LoRA layer}."""
    return {name.removeprefix("base_model.model."): m for name, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("mixed", [False, True], ids=["uniform", "mixed"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_lora_config_adapts_exactly_the_placement(arch, mixed, rslora):
    """get_peft_model accepts it; exactly the placement's modules are adapted, each at its rank and
    with the scaling the search trains with; the LoRA parameters are the placement's adapter
    params as the search counts them, and PEFT's trainable count adds the classifier head only."""
    from peft import get_peft_model

    from spaces.discovery import discover
    from trainables.config import lora_scaling
    from trainables.lora import lora_config

    model = tiny_models()[arch]()
    space = discover(model)
    placement = _placement(space, mixed)
    cfg = Config()
    cfg.train.rslora = rslora
    head = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in ("classifier", "score"))
    config = lora_config(placement, space, cfg)
    assert config.task_type == "SEQ_CLS"
    peft_model = get_peft_model(model, config)

    adapted = _adapted(peft_model)
    assert sorted(adapted) == sorted(placement.target_modules(space))
    scaling = lora_scaling(cfg)
    for k, layer in placement.sites():
        module = adapted[space.module_name(k, layer)]
        rank = placement.ranks[k][layer]
        assert module.r["default"] == rank
        assert math.isclose(module.scaling["default"], scaling.factor(rank))
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad)
    assert lora == placement.adapter_params(space)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == placement.adapter_params(space) + head


def test_lora_config_is_the_one_a_trial_trains_with():
    """A trial's PEFT model (`wrap_with_lora`) carries the same config, key for key; a causal LM
    (task.kind sft) gets CAUSAL_LM and no trained head."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from spaces.discovery import discover
    from trainables.lora import lora_config
    from trainables.train import wrap_with_lora

    def causal_lm():
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1, intermediate_size=24))

    for cfg, build, task_type in ((Config(), tiny_models()["bert"], "SEQ_CLS"),
                                  (Config.from_dict({"task": {"kind": "sft"}}), causal_lm, "CAUSAL_LM")):
        space = discover(build())
        placement = _placement(space, mixed=True)
        trained = wrap_with_lora(build(), placement, space, cfg).peft_config["default"].to_dict()
        given = lora_config(placement, space, cfg)
        assert given.task_type == task_type
        applied = get_peft_model(build(), given).peft_config["default"].to_dict()  # PEFT fills modules_to_save
        assert {k: v for k, v in applied.items() if v != trained[k]} == {}
    peft_model = get_peft_model(causal_lm(), lora_config(placement, space, cfg))  # the LM head stays frozen
    assert peft_model.get_nb_trainable_parameters()[0] == placement.adapter_params(space)


def _result(space, placement, cfg):
    from search.api import Pick, SearchResult

    pick = Pick("run", "t1", placement.key, placement, tuple(sorted(placement.rank_values())), 1e-2, 0,
                placement.adapter_params(space), "accuracy", 0.9, 0.8, 1.0, 2, True)
    return SearchResult("exp", "parent", "sqlite:///x.db", "accuracy", pick, (), (), {}, (), space, cfg)


def test_search_result_lora_config_is_its_recommendation():
    from peft import get_peft_model

    from spaces.discovery import discover

    model = tiny_models()["llama"]()
    space = discover(model)
    placement = _placement(space, mixed=True)
    result = _result(space, placement, Config())
    config = result.lora_config()
    assert sorted(config.target_modules) == sorted(result.target_modules) == sorted(placement.target_modules(space))
    assert set(config.rank_pattern.values()) == {2, 4}  # r is the largest rank, 8
    peft_model = get_peft_model(model, config)
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) == placement.adapter_params(space)


# ---- search/deploy.py --lora-config-only ---------------------------------------------------------


@pytest.fixture
def lora_store(tmp_path, new_mlflow_store, monkeypatch):
    """A hand-made store: a search's parent run (config.json with rsLoRA, space.json of a tiny
    Llama classifier) and one pruned trial with a mixed-rank placement."""
    from mlflow.tracking import MlflowClient

    from spaces.discovery import discover

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    model = tiny_models()["llama"]()
    space = discover(model)
    placement = _placement(space, mixed=True)
    cfg = Config.from_dict({"train": {"rslora": True, "lora_scale": 1.5}})
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("fake", artifact_location=(tmp_path / "artifacts").resolve().as_uri())
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    client.log_dict(parent, cfg.to_dict(), "config.json")
    client.log_dict(parent, space.to_dict(), "space.json")
    trial = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial_id": "t1", "status": "pruned"})
    client.log_dict(trial.info.run_id, placement.to_dict(), "placement.json")
    client.set_terminated(trial.info.run_id, "FINISHED")
    return uri, parent, trial.info.run_id, space, placement, cfg


def test_lora_config_only_writes_a_loadable_config(lora_store, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from search.deploy import main
    from trainables.lora import lora_config

    uri, _, trial, space, placement, cfg = lora_store
    out = tmp_path / "lora"
    assert main(["--run-id", trial, "--tracking-uri", uri, "--lora-config-only", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]  # no weights
    assert "adapter_config.json" in capsys.readouterr().out
    loaded = LoraConfig.from_pretrained(str(out))
    made = lora_config(placement, space, cfg)
    for key in ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "task_type", "fan_in_fan_out"):
        assert getattr(loaded, key) == getattr(made, key), key
    assert loaded.use_rslora and sorted(loaded.target_modules) == sorted(placement.target_modules(space))
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == 1.5 * math.sqrt(8)
    peft_model = get_peft_model(tiny_models()["llama"](), loaded)
    assert sorted(_adapted(peft_model)) == sorted(placement.target_modules(space))
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) == placement.adapter_params(space)


def test_lora_config_only_refuses_a_parent_run_and_a_full_folder(lora_store, tmp_path, capsys):
    from search.deploy import main

    uri, parent, trial, *_ = lora_store
    out = tmp_path / "lora"
    assert main(["--run-id", parent, "--tracking-uri", uri, "--lora-config-only", "--output", str(out)]) == 2
    assert "is a search's parent run, not a trial" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("x")
    assert main(["--run-id", trial, "--tracking-uri", uri, "--lora-config-only", "--output", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


# ---- the lora-placement command ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run", "score", "report", "deploy"])
def test_each_subcommand_runs_its_script_main(name, monkeypatch):
    import importlib

    from search import commands

    seen = []
    module = importlib.import_module(f"search.{name}")
    monkeypatch.setattr(module, "main", lambda argv: seen.append(argv) or 7)
    assert commands.main([name, "--flag", "value"]) == 7
    assert seen == [["--flag", "value"]]


def test_the_command_without_a_known_subcommand(capsys):
    from search import commands

    assert commands.main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
    assert commands.main([]) == 2
    assert "name a subcommand" in capsys.readouterr().err
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in ("run", "score", "report", "deploy"))


def test_the_installed_command():
    """pyproject.toml declares it, and the one the install put beside this interpreter runs."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"lora-placement": "search.commands:main"}
    exe = Path(sys.executable).parent / "lora-placement"
    proc = subprocess.run([str(exe), "deploy", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--lora-config-only" in proc.stdout


# ---- the API's inputs and errors -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, cli", [
    ({"budget": 1.5}, ["--budget", "1.5"]),
    ({"overrides": {"train.nope": 1, "search.ranks": [0, 2]}}, ["--set", "train.nope=1", "--set", "search.ranks=[0, 2]"]),
    ({"overrides": {"nodot": 1}}, ["--set", "nodot=1"]),
    ({"config": "no-such-config"}, ["--config", "no-such-config"]),
])
def test_bad_input_raises_the_line_the_cli_prints(kwargs, cli, tmp_path, capsys):
    from search.api import UsageError, find_placement
    from search.run import main

    out = tmp_path / "out"
    with pytest.raises(UsageError) as raised:
        find_placement(**{"config": "smoke", **kwargs}, output_dir=out)
    assert main(["--config", "smoke", *cli, "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {raised.value}"
    assert not out.exists()


def test_overrides_are_read_as_the_cli_reads_them():
    from search.api import override_text
    from search.cli import search_config

    cfg = search_config(["smoke"], [override_text(k, v) for k, v in {
        "train.rslora": True, "search.ranks": [2, 4], "train.lora_scale": 1.5, "model.name": "1234",
        "train.precision": "no", "data.text_column": "it's \\ \"q\""}.items()])
    assert (cfg.train.rslora, cfg.search.ranks, cfg.train.lora_scale) == (True, [2, 4], 1.5)
    assert (cfg.model.name, cfg.train.precision, cfg.data.text_column) == ("1234", "no", "it's \\ \"q\"")


def test_data_in_memory_is_read_back_as_data_source(tmp_path):
    """Pairs, columns and records become a file `data.source` reads, under the config's columns."""
    import datasets

    from search.api import write_data
    from trainables.data import load_task
    from trainables.sft import load_pairs

    texts = [f"text number {i}" for i in range(60)]
    labels = ["even" if i % 2 == 0 else "odd" for i in range(60)]
    cfg = Config.from_dict({"data": {"text_column": "sentence", "min_examples_per_label": 5}})
    for i, data in enumerate([list(zip(texts, labels)), {"sentence": texts, "label": labels},
                              [{"sentence": t, "label": y} for t, y in zip(texts, labels)],
                              datasets.DatasetDict({"train": datasets.Dataset.from_dict(
                                  {"sentence": texts, "label": labels})})]):
        cfg.data.source = write_data(data, cfg, tmp_path / f"d{i}.parquet")
        task = load_task(cfg.data)
        assert sorted(task.label_names) == ["even", "odd"] and len(task.train) + len(task.val) == 60

    sft = Config.from_dict({"task": {"kind": "sft", "prompt_column": "q"}, "model": {"name": "tiny-llama"}})
    sft.data.source = write_data([(f"question {i}", f"answer {i}") for i in range(40)], sft, tmp_path / "p.parquet")
    pairs = load_pairs(sft)
    assert len(pairs.train) + len(pairs.val) == 40


def test_data_that_cannot_be_written(tmp_path):
    import datasets

    from search.api import UsageError, write_data

    cfg = Config()
    with pytest.raises(UsageError, match="differ in length"):
        write_data({"text": ["a", "b"], "label": [1]}, cfg, tmp_path / "d.parquet")
    with pytest.raises(UsageError, match="no split 'train'; it has \\['test'\\]"):
        write_data(datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["a"]})}), cfg, tmp_path / "e")
    with pytest.raises(UsageError, match="is not usable"):
        write_data(42, cfg, tmp_path / "f.parquet")
    assert not any(tmp_path.iterdir())


def test_a_loaded_model_and_lists_become_inputs_the_search_accepts(tmp_path):
    """A model held in memory is saved with its tokenizer, and (text, label) pairs written, under a
    folder of their own in the output folder; the search's checks before Ray accept both; the
    folder goes when the search is refused."""
    from transformers import BertConfig, BertForSequenceClassification
    from transformers import BertTokenizerFast as Tokenizer

    from search.api import UsageError, _Inputs, override_text
    from search.cli import search_config
    from search.phases.prepare import check_inputs
    from trainables.model import load_tokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]))
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=24, num_labels=2))
    pairs = [(f"w{i} w{i + 1} w{i + 2}", "a" if i % 2 else "b") for i in range(50)]
    sets = [override_text("data.min_examples_per_label", 5)]
    out = tmp_path / "out"
    inputs = _Inputs(out, "mine")
    given = inputs.write(search_config(["default"], sets), model, Tokenizer(str(vocab)), pairs)
    cfg = search_config(["default"], sets + given)
    assert Path(cfg.model.name).parent == Path(cfg.data.source).parent == inputs.folder
    assert inputs.folder.parent == out.resolve() and inputs.folder.name.startswith("mine-inputs-")
    check_inputs(cfg)  # the model folder and the data, as the search checks them before Ray
    assert load_tokenizer(cfg.model)("w3 w4").input_ids == [2, 8, 9, 3]  # the search's own loader: [CLS] w3 w4 [SEP]
    inputs.remove()
    assert not out.exists()
    with pytest.raises(UsageError, match="needs its tokenizer"):
        _Inputs(out, "mine").write(cfg, model, None, None)
    assert not out.exists()


# ---- the README's example, end to end (slow) -----------------------------------------------------


def readme_example() -> str:
    """The first python block of the README's "Python API" section, as it stands."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path):
    """The README's example, verbatim, as a user's script in a fresh folder and a fresh Python (Ray
    must not have been imported before the search sets its environment), followed by the checks:
    a smoke search through the API; its LoraConfig is the recommendation's, the MLflow run it names
    is the recommended trial, and peft wraps the model with exactly its trainable parameters."""
    checks = """
from mlflow.tracking import MlflowClient
from peft import get_peft_model

from search.api import SearchResult
from trainables.model import load_model

assert isinstance(result, SearchResult)
assert sorted(lora.target_modules) == sorted(pick.placement.target_modules(result.space))
assert max(pick.ranks) == lora.r and set(lora.rank_pattern.values()) == set(pick.ranks) - {lora.r}
assert pick.confirmed and pick.n_seeds == 2 and pick.score_low <= pick.score_mean <= pick.score_high
assert pick.run_id in {c.run_id for c in result.confirmed}
assert MlflowClient(result.tracking_uri).get_run(pick.run_id).data.tags.get("recommended") == "true"
assert {t.run_id for t in result.trials} >= {c.run_id for c in result.confirmed}
model = load_model(result.config.model, 2, seed=0)  # the model the search trained, rebuilt from its config
peft_model = get_peft_model(model, lora)
assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) == pick.adapter_params
assert peft_model.get_nb_trainable_parameters()[0] == pick.trainable_params
print("README example checked")
"""
    script = tmp_path / "example.py"
    script.write_text(readme_example() + checks)
    env = {**_script_env(None), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "README example checked" in proc.stdout
