import json
import re

import numpy as np
import pytest
import torch

from bertdistill.config import ConfigError, DataConfig
from bertdistill.data.loading import BatchSampler, Collator, load_examples, resolve_task, tokenize
from bertdistill.data.tasks import GLUE_TASKS, get_task


def test_glue_registry_is_complete():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("SST-2") is GLUE_TASKS["sst2"]
    assert GLUE_TASKS["stsb"].regression and GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert "dev_mismatched" in GLUE_TASKS["mnli"].tsv_files
    with pytest.raises(KeyError, match="known GLUE tasks"):
        get_task("imdb")


def test_task_metrics():
    mrpc = GLUE_TASKS["mrpc"].compute_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert mrpc["accuracy"] == 0.75 and mrpc["f1"] == pytest.approx(2 / 3)
    stsb = GLUE_TASKS["stsb"].compute_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.5]))
    assert stsb["pearson"] > 0.99 and stsb["spearman"] == pytest.approx(1.0)
    cola = GLUE_TASKS["cola"].compute_metrics(np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0]))
    assert cola["matthews"] == pytest.approx(1.0)


def test_tsv_with_bom_and_quotes_is_read_verbatim(tmp_path):
    (tmp_path / "train.tsv").write_text(
        '\ufeffsentence\tlabel\nit\'s "great" , really \t1\na "bad film\t0\n', encoding="utf-8"
    )
    task = get_task("sst2")
    ex = load_examples(DataConfig(path=str(tmp_path)), task, "train")
    assert ex.texts == [('it\'s "great" , really',), ('a "bad film',)]  # QUOTE_NONE: quotes kept
    assert ex.labels == [1, 0]


def test_headerless_cola_and_pairs(tmp_path):
    (tmp_path / "train.tsv").write_text("gj04\t1\t\tThe book fell .\ngj04\t0\t*\tBook the fell .\n")
    ex = load_examples(DataConfig(task="cola", path=str(tmp_path)), get_task("cola"), "train")
    assert ex.texts == [("The book fell .",), ("Book the fell .",)] and ex.labels == [1, 0]
    (tmp_path / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b .\tA c .\n")
    ex = load_examples(DataConfig(task="mrpc", path=str(tmp_path)), get_task("mrpc"), "dev")
    assert ex.texts == [("A b .", "A c .")] and ex.labels == [1]


def test_bad_labels_and_missing_files_are_clear(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\tpositive\n")
    with pytest.raises(ConfigError, match=r"train.tsv:2: .*label 'positive' is not one of \['0', '1'\]"):
        load_examples(DataConfig(path=str(tmp_path)), get_task("sst2"), "train")
    with pytest.raises(ConfigError, match="no dev file"):
        load_examples(DataConfig(path=str(tmp_path)), get_task("sst2"), "dev")
    with pytest.raises(ConfigError, match="does not exist"):
        load_examples(DataConfig(path=str(tmp_path / "nope")), get_task("sst2"), "train")


def test_custom_jsonl_and_csv(tmp_path):
    rows = [{"q": "is it", "a": "yes it is", "y": "match"}, {"q": "why", "a": "no", "y": "other"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(
        task="custom", path=str(tmp_path), text_fields=["q", "a"], label_field="y", labels=["other", "match"]
    )
    task = resolve_task(cfg)
    ex = load_examples(cfg, task, "train")
    assert ex.texts == [("is it", "yes it is"), ("why", "no")] and ex.labels == [1, 0]
    (tmp_path / "dev.csv").write_text("q,a,y\nhello,world,other\n")
    assert load_examples(cfg, task, "dev").labels == [0]
    with pytest.raises(ConfigError, match="text_fields"):
        resolve_task(DataConfig(task="custom"))


def test_batch_sampler_is_deterministic_and_complete():
    lengths = [(i * 7) % 23 + 1 for i in range(230)]
    s = BatchSampler(lengths, 8, shuffle=True, bucket=True, seed=3)
    s.set_epoch(1)
    a = list(s)
    s.set_epoch(1)
    assert list(s) == a  # same epoch, same order (exact resume)
    s.set_epoch(2)
    assert list(s) != a
    flat = sorted(i for b in a for i in b)
    assert flat == list(range(230)) and len(a) == len(s) == 29
    # bucketing reduces padding against random batches
    rnd = BatchSampler(lengths, 8, shuffle=True, bucket=False, seed=3)

    def pad(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert pad(a) < pad(list(rnd)) / 3


def test_collator_pads_dynamically(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    from bertdistill.data.loading import Examples

    ds = tokenize(Examples([("good movie",), ("the film was very dull and boring",)], [1, 0]), tok, 32)
    batch = Collator(tok.pad_token_id)([ds[0], ds[1]])
    ids, mask = batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"]
    assert ids.shape == (2, 9) and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert (ids[0, 4:] == tok.pad_token_id).all()
    assert batch["labels"].dtype == torch.long and batch["idx"].tolist() == [0, 1]
    assert "teacher_inputs" not in batch  # same tokenizer: the teacher reads `inputs`


def test_hub_loader_maps_columns_and_label_order(monkeypatch):
    """The HF-hub path (used online): columns by the task's hub names, MNLI labels re-mapped to our order."""
    import datasets

    from bertdistill.data.loading import read_hf

    seen = {}

    def fake_load(*args, split):
        seen["args"] = (args, split)
        return datasets.Dataset.from_dict(
            {"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": [0, 2], "idx": [0, 1]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ex = read_hf(get_task("mnli"), "dev")
    assert seen["args"] == (("nyu-mll/glue", "mnli"), "validation_matched")
    assert ex.texts == [("a", "c"), ("b", "d")]
    # hub order: entailment, neutral, contradiction; ours: contradiction, entailment, neutral
    assert ex.labels == [1, 0]


def test_tokenized_lengths_are_computed_once():
    """``lengths`` is read per example in loops (the teacher cache build): one list, not a new one per read."""
    from bertdistill.data.loading import TokenizedDataset

    ds = TokenizedDataset([[1, 2, 3], [4], [5, 6]], None, [0, 1, 0])
    assert ds.lengths == [3, 1, 2]
    assert ds.lengths is ds.lengths


def test_custom_task_metrics_choose_what_is_reported_and_selected():
    """``data.metrics`` for your own task: the first one is the main metric (model selection, the majority
    baseline, retention); macro F1 for an imbalanced or multi-class task; mismatches are one clear line."""
    labels = ["spam", "ham", "other"]
    task = resolve_task(
        DataConfig(task="custom", text_fields=["text"], labels=labels, metrics=["macro_f1", "accuracy"])
    )
    assert task.main_metric == "macro_f1" and task.metrics == ("macro_f1", "accuracy")
    preds, gold = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 1, 2])
    got = task.compute_metrics(preds, gold)
    # per class F1: spam 2·3/(4+3) = 6/7, ham 0, other 0 → macro 2/7; accuracy 3/5
    assert got == pytest.approx({"macro_f1": 2 / 7, "accuracy": 0.6})
    default = resolve_task(DataConfig(task="custom", text_fields=["text"], labels=labels))
    assert default.metrics == ("accuracy",)
    for cfg, message in (
        (
            {"labels": labels, "metrics": ["f1"]},
            "f1 is the binary F1 of the second label; this task has 3 labels",
        ),
        ({"labels": labels, "metrics": ["pearson"]}, "metrics ['pearson'] for a classification task"),
        ({"regression": True, "metrics": ["accuracy"]}, "metrics ['accuracy'] for a regression task"),
        ({"labels": labels, "metrics": ["auc"]}, "unknown metric(s) ['auc']"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_task(DataConfig(task="custom", text_fields=["text"], **cfg))
    with pytest.raises(ConfigError, match="data.metrics applies to custom tasks; 'sst2'"):
        resolve_task(DataConfig(task="sst2", metrics=["macro_f1"]))
